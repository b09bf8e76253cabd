//! Human sizes: `10GiB`, `500MiB`, `1.5 GB`, `4096`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Parses a size into bytes. Binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`,
/// `TB`) suffixes; `K`/`M`/`G`/`T` alone are binary, as users of storage tools expect.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("size must not be negative (got {s:?})"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {s:?} (use B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    if num.is_empty() {
        return Err(format!("size {s:?} has no number"));
    }
    let bytes = if let Some((int, frac)) = num.split_once('.') {
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| format!("bad size {s:?}"))?
        };
        let digits = frac.len().min(9) as u32;
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            frac[..digits as usize]
                .parse()
                .map_err(|_| format!("bad size {s:?}"))?
        };
        let scale = 10u64.pow(digits);
        int.checked_mul(mult).and_then(|a| {
            a.checked_add((u128::from(frac) * u128::from(mult) / u128::from(scale)) as u64)
        })
    } else {
        num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
    };
    bytes.ok_or_else(|| format!("size {s:?} is too large"))
}

/// Formats bytes for people: `10 GiB`, `512 MiB`, `12345 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, v) in UNITS {
        if bytes >= v {
            let whole = bytes / v;
            let tenth = (bytes % v) * 10 / v;
            return if tenth == 0 {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenth} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// Deserializes a size from a string (`10GiB`) or a plain integer of bytes.
pub fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as 10GiB, 500MiB or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size must not be negative (got {v})")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v < 0.0 {
                return Err(E::custom(format!("size must not be negative (got {v})")));
            }
            Err(E::custom(format!(
                "a size without a unit is a whole number of bytes (got {v}); write e.g. 1.5GiB"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10 GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert!(
            parse_size("10 GiX")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("GiB").is_err());
        for neg in ["-1GiB", " -5", "-0.5 MB"] {
            let e = parse_size(neg).unwrap_err();
            assert!(e.contains("size must not be negative"), "{neg}: {e}");
        }
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
