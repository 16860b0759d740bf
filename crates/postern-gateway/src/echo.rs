//! A tiny echo upstream (`url = "builtin:echo"`): answers every request with
//! JSON `{"method", "path", "query", "headers"}`, headers as it received
//! them; an `Upgrade` request is answered 101 and its bytes echoed back.
//! It is a real HTTP/1.1 server on loopback, so the demo exercises the
//! same proxy path as production.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

/// Bind `127.0.0.1:0` and serve echo until the runtime stops.
pub async fn spawn_echo() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // An upgrade request: agree (101), then echo bytes back on the raw connection.
    if let Some(proto) = req.headers().get(http::header::UPGRADE).cloned() {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(http::header::UPGRADE, proto);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(resp);
    }
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    let body = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
