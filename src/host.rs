//! Host and SNI patterns (`kea.internal`, `*.example.org`, `*`), shared by HTTP routes,
//! `sni_certs` and cluster routes; a leaf that the config's validation can use too.

/// A host (or SNI) pattern: exact name, `*.example.org` (one or more labels), or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches anything, including no host at all.
    Any,
    /// Matches one lowercase name.
    Exact(String),
    /// `*.example.org`: stores `.example.org`; matches names ending in it.
    Suffix(String),
}

impl HostPattern {
    /// Parses a pattern; names are case-insensitive.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("`{s}`: a wildcard may only be a leading `*.`"));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if s.is_empty() || s.contains('*') {
            return Err(format!("`{s}`: use an exact name, `*.example.org`, or `*`"));
        }
        Ok(HostPattern::Exact(s))
    }

    /// Whether a lowercase host (without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
        }
    }

    /// Higher is more specific; breaks ties between equally long path prefixes.
    pub fn specificity(&self) -> u8 {
        match self {
            HostPattern::Any => 0,
            HostPattern::Suffix(_) => 1,
            HostPattern::Exact(_) => 2,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(sfx) => write!(f, "*{sfx}"),
        }
    }
}

/// Lowercases a Host header value and strips its port (`[::1]:80` → `[::1]`).
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        raw.split_once(']')
            .map(|(h, _)| &raw[..h.len() + 1])
            .unwrap_or(raw)
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(raw)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let any = HostPattern::parse("*").unwrap();
        assert!(any.matches("") && any.matches("x.org"));
        let w = HostPattern::parse("*.Example.org").unwrap();
        assert!(w.matches("a.example.org") && w.matches("a.b.example.org"));
        assert!(!w.matches("example.org") && !w.matches("aexample.org"));
        let e = HostPattern::parse("Kea.internal").unwrap();
        assert!(e.matches("kea.internal") && !e.matches("x.kea.internal"));
        assert!(HostPattern::parse("a.*.org").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Kea.Internal:8443"), "kea.internal");
        assert_eq!(normalize_host("[::1]:5665"), "[::1]");
        assert_eq!(normalize_host("example.org."), "example.org");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }
}
