//! Units written in the YAML: durations (`500ms`, `10s`, `5m`, `1h`) and sizes (`1024`,
//! `512KiB`, `1MiB`, `2MB`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    /// Parses `500ms`, `10s`, `1.5s`, `5m`, `1h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration `{s}`: missing unit (ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: `{num}` is not a number"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            other => {
                return Err(format!(
                    "invalid duration `{s}`: unknown unit `{other}` (use ms, s, m or h)"
                ))
            }
        };
        if !secs.is_finite() || secs > 1e9 {
            return Err(format!("invalid duration `{s}`: out of range"));
        }
        Ok(HumanDuration(std::time::Duration::from_secs_f64(secs)))
    }

    /// The value as a `std` duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    pub(crate) const fn secs(s: u64) -> Self {
        HumanDuration(std::time::Duration::from_secs(s))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A byte size written as `1024`, `512KiB`, `1MiB`, `1GiB` (or decimal `kB`/`MB`/`GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a size with an optional binary or decimal unit.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size `{s}`: expected a whole number and a unit like 1MiB")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size `{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().get().as_millis(),
            500
        );
        assert_eq!(HumanDuration::parse("10s").unwrap().get().as_secs(), 10);
        assert_eq!(
            HumanDuration::parse("1.5s").unwrap().get().as_millis(),
            1500
        );
        assert_eq!(HumanDuration::parse("2m").unwrap().get().as_secs(), 120);
        assert_eq!(HumanDuration::parse("1h").unwrap().get().as_secs(), 3600);
        assert!(HumanDuration::parse("10")
            .unwrap_err()
            .contains("missing unit"));
        assert!(HumanDuration::parse("10x")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(HumanDuration::parse("s")
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(ByteSize::parse("512KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("1000").unwrap().0, 1000);
        assert_eq!(ByteSize::parse("2MB").unwrap().0, 2_000_000);
        assert!(ByteSize::parse("1 parsec").is_err());
        assert!(ByteSize::parse("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
