//! libvirt's scaled integers (`<capacity unit='GiB'>10</capacity>`), read as libvirt reads them
//! (`virScaleInteger`): `b`/`byte`/`bytes` = 1, `K`/`KiB` = 1024, `KB` = 1000, and so on up to
//! `E`, letters in any case. Without a unit, bytes.

/// The bytes that `value` in `unit` stands for, or why not.
pub fn scaled(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{value:?} is not a whole number of {}",
            unit.unwrap_or("bytes")
        ));
    }
    let n: u64 = v.parse().map_err(|_| format!("{value:?} is too large"))?;
    let factor = unit_factor(unit.unwrap_or("bytes"))?;
    n.checked_mul(factor).ok_or_else(|| {
        format!(
            "{value} {} is more than 2^64 bytes",
            unit.unwrap_or("bytes")
        )
    })
}

/// The multiplier of a libvirt unit.
pub fn unit_factor(unit: &str) -> Result<u64, String> {
    let u = unit.trim().to_ascii_lowercase();
    if matches!(u.as_str(), "" | "b" | "byte" | "bytes") {
        return Ok(1);
    }
    let (first, rest) = u.split_at(1);
    let power = match first {
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        "e" => 6,
        _ => return Err(unknown(unit)),
    };
    let base: u64 = match rest {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return Err(unknown(unit)),
    };
    Ok(base.pow(power))
}

fn unknown(unit: &str) -> String {
    format!("unknown unit {unit:?} (libvirt's units: bytes, KB, K, KiB, MB, M, MiB, ... EiB)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_units() {
        assert_eq!(scaled("10", None).unwrap(), 10);
        assert_eq!(scaled("10", Some("bytes")).unwrap(), 10);
        assert_eq!(scaled("1", Some("KB")).unwrap(), 1000);
        assert_eq!(scaled("1", Some("kb")).unwrap(), 1000);
        assert_eq!(scaled("1", Some("K")).unwrap(), 1024);
        assert_eq!(scaled("1", Some("KiB")).unwrap(), 1024);
        assert_eq!(scaled("2", Some("MB")).unwrap(), 2_000_000);
        assert_eq!(scaled("2", Some("MiB")).unwrap(), 2 << 20);
        assert_eq!(scaled("3", Some("G")).unwrap(), 3 << 30);
        assert_eq!(scaled("1", Some("TB")).unwrap(), 1_000_000_000_000);
        assert_eq!(scaled("1", Some("EiB")).unwrap(), 1 << 60);
        for (v, u) in [
            ("", None),
            ("-1", None),
            ("1.5", Some("G")),
            ("1", Some("X")),
            ("1", Some("Kx")),
            ("16", Some("EiB")),
            ("99999999999999999999", None),
        ] {
            assert!(scaled(v, u).is_err(), "{v:?} {u:?} accepted");
        }
    }
}
