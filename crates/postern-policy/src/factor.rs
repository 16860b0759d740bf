//! Authentication factors and sets of them.

use std::fmt;

/// One way a request can prove who it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Factor {
    /// A client certificate that chains to a configured trust anchor.
    Mtls,
    /// A bearer JWT from a configured issuer.
    Jwt,
    /// A browser session from an OpenID Connect sign-in.
    Oidc,
}

impl Factor {
    pub const ALL: [Factor; 3] = [Factor::Mtls, Factor::Jwt, Factor::Oidc];

    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Mtls => "mtls",
            Factor::Jwt => "jwt",
            Factor::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Option<Factor> {
        match s {
            "mtls" => Some(Factor::Mtls),
            "jwt" => Some(Factor::Jwt),
            "oidc" => Some(Factor::Oidc),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Factor::Mtls => 1,
            Factor::Jwt => 2,
            Factor::Oidc => 4,
        }
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A small set of factors (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FactorSet(u8);

impl FactorSet {
    pub const EMPTY: FactorSet = FactorSet(0);

    pub fn all() -> FactorSet {
        Factor::ALL.iter().copied().collect()
    }
    pub fn with(mut self, f: Factor) -> FactorSet {
        self.0 |= f.bit();
        self
    }
    pub fn insert(&mut self, f: Factor) {
        self.0 |= f.bit();
    }
    pub fn contains(self, f: Factor) -> bool {
        self.0 & f.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// `self` has every factor of `other`.
    pub fn is_superset(self, other: FactorSet) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn minus(self, other: FactorSet) -> FactorSet {
        FactorSet(self.0 & !other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = Factor> {
        Factor::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Factor> for FactorSet {
    fn from_iter<I: IntoIterator<Item = Factor>>(iter: I) -> Self {
        let mut s = FactorSet::EMPTY;
        for f in iter {
            s.insert(f);
        }
        s
    }
}

impl FactorSet {
    /// The pieces of the set's text (`mtls`, `+`, `jwt`; `none` when empty).
    fn text_parts(&self) -> impl Iterator<Item = &'static str> + '_ {
        let none = self.is_empty().then_some("none");
        let names = self
            .iter()
            .enumerate()
            .flat_map(|(i, f)| [(i > 0).then_some("+"), Some(f.as_str())])
            .flatten();
        none.into_iter().chain(names)
    }

    /// Appends the set as [`Display`](fmt::Display) writes it (`mtls+jwt`,
    /// `none`), without the formatting machinery: this runs for every request.
    pub fn push_to(&self, out: &mut String) {
        self.text_parts().for_each(|p| out.push_str(p));
    }
}

impl fmt::Display for FactorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text_parts().try_for_each(|p| f.write_str(p))
    }
}
