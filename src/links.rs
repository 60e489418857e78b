//! Link rates given by the user (`--links FILE`) and the lower bound T_lb of a distribution
//! (../shared/SCENARIOS.md): no schedule can finish before every client has downloaded all it
//! lacks, every byte of a file has left its owner once, and all the downloads have been carried
//! by all the uplinks.
//!
//! The file has one line per client: `NAME UP DOWN`. A rate is a number with a unit: `bit`,
//! `kbit`, `mbit`, `gbit` (also `bps`, `kbps`, `mbps`, `gbps`; bits per second, powers of
//! 1000, as `tc` counts them) or `B`, `KB`, `MB`, `GB` (bytes per second, powers of 1000),
//! `KiB`, `MiB`, `GiB` (powers of 1024); an optional `/s` may follow. Case does not matter.
//! Blank lines and lines starting with `#` are skipped.

use std::collections::BTreeMap;

/// One client's link, in bytes per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub up: f64,
    pub down: f64,
}

/// The links of a run, by client name.
pub type Links = BTreeMap<String, Link>;

/// A rate such as `1gbit`, `250Mbit/s` or `125MB/s`, in bytes per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (a number then a unit, e.g. 1gbit)"))?;
    let per_byte = match unit.to_ascii_lowercase().as_str() {
        "bit" | "bps" => 1.0 / 8.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        "" => return Err(format!("rate {s:?} has no unit (e.g. 1gbit, 125MB/s)")),
        u => return Err(format!("rate {s:?} has an unknown unit {u:?}")),
    };
    let r = n * per_byte;
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err(format!("rate {s:?} must be more than zero"))
    }
}

/// Parses a links file; an error names the line.
pub fn parse_links(text: &str) -> Result<Links, String> {
    let mut links = Links::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", i + 1);
        let w: Vec<&str> = line.split_whitespace().collect();
        let [name, up, down] = w[..] else {
            return Err(at(format!("expected NAME UP DOWN, got {line:?}")));
        };
        let link = Link {
            up: parse_rate(up).map_err(at)?,
            down: parse_rate(down).map_err(at)?,
        };
        if links.insert(name.to_string(), link).is_some() {
            return Err(at(format!("client {name:?} is listed twice")));
        }
    }
    if links.is_empty() {
        return Err("no links in the file".into());
    }
    Ok(links)
}

/// Reads and parses a links file.
pub fn read_links(path: &std::path::Path) -> Result<Links, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --links {}: {e}", path.display()))?;
    parse_links(&text).map_err(|e| format!("--links {}: {e}", path.display()))
}

/// The lower bound of a run and what sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct LowerBound {
    pub t_lb_ms: f64,
    /// Which term is the largest, e.g. "download of client3".
    pub binding: String,
}

/// T_lb for clients `(name, bytes it starts with)` on `links`. Every client must have a link.
pub fn lower_bound(clients: &[(String, u64)], links: &Links) -> Result<LowerBound, String> {
    let total: u64 = clients.iter().map(|c| c.1).sum();
    let mut best = (0.0f64, String::from("nothing to send"));
    let mut lacking = 0.0;
    let mut uplinks = 0.0;
    for (name, own) in clients {
        let l = links
            .get(name)
            .ok_or_else(|| format!("no link rates for {name}"))?;
        let lacks = (total - own) as f64;
        lacking += lacks;
        uplinks += l.up;
        for (t, what) in [
            (lacks / l.down, format!("download of {name}")),
            (*own as f64 / l.up, format!("upload of {name}'s files")),
        ] {
            if t > best.0 {
                best = (t, what);
            }
        }
    }
    if uplinks > 0.0 && lacking / uplinks > best.0 {
        best = (lacking / uplinks, "all uplinks together".into());
    }
    Ok(LowerBound {
        t_lb_ms: best.0 * 1000.0,
        binding: best.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit"), Ok(125e6));
        assert_eq!(parse_rate("250Mbit/s"), Ok(31.25e6));
        assert_eq!(parse_rate("125MB/s"), Ok(125e6));
        assert_eq!(parse_rate("2MiB"), Ok(2097152.0));
        assert_eq!(parse_rate("0.5kbps"), Ok(62.5));
        assert!(parse_rate("100").unwrap_err().contains("no unit"));
        assert!(parse_rate("1furlong").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("0gbit").unwrap_err().contains("more than zero"));
        assert!(parse_rate("gbit").is_err());
    }

    #[test]
    fn links_file() {
        let l = parse_links("# name up down\n\nc1 1gbit 1gbit\n  c2 250mbit 1gbit \n").unwrap();
        assert_eq!(l["c2"].up, 31.25e6);
        assert_eq!(l.len(), 2);
        assert_eq!(
            parse_links("c1 1gbit\n").unwrap_err(),
            "line 1: expected NAME UP DOWN, got \"c1 1gbit\""
        );
        assert!(
            parse_links("c1 1gbit 1gbit\nc1 1gbit 1gbit")
                .unwrap_err()
                .starts_with("line 2: client \"c1\" is listed twice")
        );
        assert!(parse_links("# nothing\n").is_err());
    }

    #[test]
    fn the_scenarios_bounds() {
        let mb = 500_000_000;
        let clients: Vec<(String, u64)> = (1..=4).map(|i| (format!("c{i}"), mb)).collect();
        let sym =
            parse_links("c1 1gbit 1gbit\nc2 1gbit 1gbit\nc3 1gbit 1gbit\nc4 1gbit 1gbit").unwrap();
        // 1.5 GB to download at 125 MB/s: 12 s.
        let b = lower_bound(&clients, &sym).unwrap();
        assert!((b.t_lb_ms - 12_000.0).abs() < 1e-6, "{b:?}");
        assert_eq!(b.binding, "download of c1");
        let mut slow = sym.clone();
        slow.get_mut("c1").unwrap().up = 31.25e6;
        // 500 MB leave c1 at 31.25 MB/s: 16 s.
        let b = lower_bound(&clients, &slow).unwrap();
        assert!((b.t_lb_ms - 16_000.0).abs() < 1e-6, "{b:?}");
        assert_eq!(b.binding, "upload of c1's files");
        // The sum of the uplinks binds when every uplink is slow and downlinks are fast: each
        // of 3 clients lacks 2 F, and 6 F go through 3 uplinks of 12.5 MB/s.
        let up = parse_links("a 100mbit 10gbit\nb 100mbit 10gbit\nc 100mbit 10gbit").unwrap();
        let three: Vec<(String, u64)> = ["a", "b", "c"].map(|n| (n.into(), 125_000_000)).into();
        let b = lower_bound(&three, &up).unwrap();
        assert_eq!(b.binding, "all uplinks together");
        assert!((b.t_lb_ms - 20_000.0).abs() < 1e-6, "{b:?}");
        let missing = lower_bound(&clients, &up).unwrap_err();
        assert_eq!(missing, "no link rates for c1");
    }
}
