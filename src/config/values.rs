//! Value types admins write as strings: durations, sizes, rates, networks and address globs.
//! Each parses from the text form used in `config-reference.toml` and reports a message that
//! says what was expected, so the config loader can put it next to the file, line and key.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

/// A human duration such as `"30s"`, `"5m"`, `"4h"` or `"5d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as \"30s\", \"5m\" or \"4h\" ({e})"))
}

/// A byte count such as `"35MiB"`, `"10MB"`, `"512KiB"` or `"1000"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a size such as \"35MiB\" or \"10MB\", got {text:?}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// An event budget: `count` events per `period`, written `"30/min"`, `"2/s"` or `"10/15min"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected =
            || format!("expected a rate such as \"30/min\" or \"10/15min\", got {text:?}");
        let (count, period) = text.trim().split_once('/').ok_or_else(expected)?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        let period = period.trim();
        // "min" means "1min": humantime wants a number in front of every unit.
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(period)?
        } else {
            parse_duration(&format!("1{period}"))?
        };
        if count == 0 || period.is_zero() {
            return Err(format!(
                "rate {text:?} must allow at least one event per period"
            ));
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

/// A CIDR network; a bare address means a single host.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        // 192.168.1.10/24: a host meant as /32, or the network meant? Either way the admin
        // should say which, since the two trust very different sets of clients.
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: write the network {:?}, or the host {:?}",
                net.trunc().to_string(),
                IpNet::from(net.addr()).to_string()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("expected a network such as \"192.168.1.0/24\" or \"::1/128\", got {text:?}")
    })
}

/// A case-insensitive glob over e-mail addresses: `*@contoso.com`, `scanner?@contoso.com`.
#[derive(Clone)]
pub struct AddressGlob {
    pattern: String,
    matcher: wildmatch::WildMatch,
}

impl AddressGlob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err("an address pattern may not be empty".into());
        }
        Ok(AddressGlob {
            pattern: pattern.to_owned(),
            matcher: wildmatch::WildMatch::new_case_insensitive(pattern),
        })
    }

    pub fn matches(&self, address: &str) -> bool {
        self.matcher.matches(address)
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Debug for AddressGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pattern)
    }
}

/// True when `address` matches any of `globs`; an empty list allows every address.
pub fn allowed_by(globs: &[AddressGlob], address: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| g.matches(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("35MiB"), Ok(35 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn rates() {
        let rate: Rate = "30/min".parse().unwrap();
        assert_eq!((rate.count, rate.period), (30, Duration::from_secs(60)));
        let rate: Rate = "10/15min".parse().unwrap();
        assert_eq!((rate.count, rate.period), (10, Duration::from_secs(900)));
        let rate: Rate = "2/s".parse().unwrap();
        assert_eq!((rate.count, rate.period), (2, Duration::from_secs(1)));
        assert!("0/min".parse::<Rate>().is_err());
        assert!("30 per minute".parse::<Rate>().is_err());
        assert!("30/fortnight".parse::<Rate>().is_err());
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_network("127.0.0.0/8").unwrap().to_string(),
            "127.0.0.0/8"
        );
        assert_eq!(
            parse_network("192.168.1.10/24").unwrap_err(),
            "\"192.168.1.10/24\" has host bits set: write the network \"192.168.1.0/24\", or the host \"192.168.1.10/32\""
        );
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        assert!(parse_network("10.0.0.0/33").is_err());
    }

    #[test]
    fn globs() {
        let glob = AddressGlob::new("*@Contoso.com").unwrap();
        assert!(glob.matches("scanner@contoso.COM"));
        assert!(!glob.matches("scanner@contoso.com.evil"));
        assert!(allowed_by(&[], "anyone@anywhere"));
    }
}
