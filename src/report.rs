//! `p2pshare report [LOG_DIR]`: the logs of every node read as one timeline (`timeline`), and
//! from it, per client, the time to the first chunk and to each file, the mean and peak rates,
//! the bytes exchanged with each peer; the critical path of the run (the chunk that arrived
//! last, from whom, and what it waited for); T_lb when the link rates are known; and
//! LOG_DIR/report.svg (`svg`): bytes held and upload rate over time, one line per client.
//!
//! All times are on the server's System Clock; the report shows them from the start of the run
//! (when the server sent the client list).

use crate::error::Error;
use crate::links::{Links, lower_bound};
use crate::svg::{Panel, Series, chart, nice_step};
use crate::timeline::{Chunk, ClockRec, Timeline};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

const MIB: f64 = 1048576.0;
/// Most points drawn per held-bytes line (the rest add nothing visible).
const MAX_POINTS: usize = 800;
/// A request this soon after its source got the chunk was prompt: a client's timers run every
/// 20 ms, and a have crosses the network in between.
const PROMPT_MS: f64 = 25.0;

/// One client's figures. Times are in ms since the client could start (its client list).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientFigures {
    pub name: String,
    /// When it could start, on the System Clock.
    pub start_ms: f64,
    pub first_chunk_ms: Option<f64>,
    /// (file, ms to have it verified and renamed).
    pub files: Vec<(String, f64)>,
    pub done_ms: Option<f64>,
    pub received: u64,
    /// Bytes per second over the whole download, and over the best bin.
    pub mean_rate: Option<f64>,
    pub peak_rate: Option<f64>,
    pub from_peer: BTreeMap<String, u64>,
    pub to_peer: BTreeMap<String, u64>,
    pub clock: Option<ClockRec>,
    pub md5_failed: usize,
    pub timeouts: usize,
}

/// The whole report.
pub struct Report {
    pub clients: Vec<ClientFigures>,
    /// Width of the bins for the peak rate and the upload chart (ms).
    pub bin_ms: f64,
    /// The run's length: the server's total_ms, or else first join to last completion.
    pub total_ms: Option<f64>,
    /// T_lb (ms) and what sets it.
    pub t_lb: Option<(f64, String)>,
    /// Why T_lb is not known, if it is not.
    pub t_lb_missing: Option<String>,
}

fn every_chunk(tl: &Timeline) -> impl Iterator<Item = (&String, &Chunk)> {
    tl.clients
        .iter()
        .flat_map(|(n, c)| c.chunks.iter().map(move |ch| (n, ch)))
}

/// The last time anything happened (System Clock).
fn end_ms(tl: &Timeline) -> f64 {
    let mut end = tl.finished_ms.unwrap_or(f64::MIN);
    for c in tl.clients.values() {
        end = end.max(c.all_complete_ms.unwrap_or(f64::MIN));
        end = c.chunks.iter().map(|x| x.t_ms).fold(end, f64::max);
    }
    if end == f64::MIN { tl.origin_ms() } else { end }
}

/// The bins of `bin_ms` from the origin: bytes landing in each, for chunks passing `keep`.
fn binned(tl: &Timeline, bin_ms: f64, keep: impl Fn(&String, &Chunk) -> bool) -> Vec<u64> {
    let origin = tl.origin_ms();
    let n = (((end_ms(tl) - origin) / bin_ms).floor().max(0.0) as usize) + 1;
    let mut bins = vec![0u64; n];
    for (name, ch) in every_chunk(tl) {
        if keep(name, ch) {
            let b = (((ch.t_ms - origin) / bin_ms).floor().max(0.0) as usize).min(n - 1);
            bins[b] += ch.bytes;
        }
    }
    bins
}

impl Report {
    pub fn build(tl: &Timeline, links: Option<&Links>) -> Report {
        let origin = tl.origin_ms();
        let span = (end_ms(tl) - origin).max(0.0);
        let bin_ms = nice_step(span, 30.0).max(10.0);
        let mut clients = Vec::new();
        for name in tl.client_names() {
            let log = tl.clients.get(&name).cloned().unwrap_or_default();
            let start = log.started_ms.unwrap_or(origin);
            let mut f = ClientFigures {
                name: name.clone(),
                start_ms: start,
                first_chunk_ms: log.chunks.iter().map(|c| c.t_ms - start).reduce(f64::min),
                files: log
                    .files_done
                    .iter()
                    .map(|(n, t)| (n.clone(), t - start))
                    .collect(),
                done_ms: log.all_complete_ms.map(|t| t - start),
                received: log.chunks.iter().map(|c| c.bytes).sum(),
                clock: log.clock.last().cloned(),
                md5_failed: log.md5_failed,
                timeouts: log.timeouts,
                ..Default::default()
            };
            for c in &log.chunks {
                *f.from_peer.entry(c.from.clone()).or_default() += c.bytes;
            }
            for (other, ol) in &tl.clients {
                let sent: u64 = ol
                    .chunks
                    .iter()
                    .filter(|c| c.from == name)
                    .map(|c| c.bytes)
                    .sum();
                if sent > 0 {
                    f.to_peer.insert(other.clone(), sent);
                }
            }
            let last = log
                .all_complete_ms
                .or(log.chunks.iter().map(|c| c.t_ms).reduce(f64::max));
            f.mean_rate = last
                .filter(|t| *t > start && f.received > 0)
                .map(|t| f.received as f64 * 1000.0 / (t - start));
            f.peak_rate = binned(tl, bin_ms, |n, _| *n == name)
                .into_iter()
                .max()
                .filter(|b| *b > 0)
                .map(|b| b as f64 * 1000.0 / bin_ms);
            clients.push(f);
        }
        let total_ms = tl.total_ms.or_else(|| {
            let first = tl
                .joined
                .values()
                .copied()
                .chain(tl.clients.values().filter_map(|c| c.connected_ms))
                .reduce(f64::min)?;
            let last = tl
                .clients
                .values()
                .filter_map(|c| c.all_complete_ms)
                .reduce(f64::max)?;
            Some(last - first)
        });
        let (t_lb, t_lb_missing) = match links {
            Some(l) => {
                let owned: Vec<(String, u64)> = tl
                    .client_names()
                    .into_iter()
                    .map(|n| {
                        let b = tl.owned_bytes(&n);
                        (n, b)
                    })
                    .collect();
                if tl.files.is_empty() {
                    (None, Some("server.log lists no files (file_listed)".into()))
                } else {
                    match lower_bound(&owned, l) {
                        Ok(b) => (Some((b.t_lb_ms, b.binding)), None),
                        Err(e) => (None, Some(e)),
                    }
                }
            }
            None => match &tl.lower_bound {
                Some(b) => (Some(b.clone()), None),
                None => (None, Some("no link rates (give --links FILE)".into())),
            },
        };
        Report {
            clients,
            bin_ms,
            total_ms,
            t_lb,
            t_lb_missing,
        }
    }

    /// The text printed on stdout.
    pub fn text(&self, tl: &Timeline, dir: &Path) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "report of {}: {} logs, {} lines; {} malformed lines skipped; {} lines before a \
             client's welcome skipped (own clock)",
            dir.display(),
            tl.logs,
            tl.lines,
            tl.malformed,
            tl.local_clock_lines
        );
        for m in &tl.malformed_examples {
            let _ = writeln!(o, "  malformed: {m}");
        }
        let origin = tl.origin_ms();
        let _ = writeln!(
            o,
            "run: start at {origin:.3} ms (System Clock); times below are from each client's start"
        );
        match self.total_ms {
            Some(t) => {
                let _ = writeln!(o, "total: {t:.1} ms");
            }
            None => o.push_str("total: unknown (no client completed)\n"),
        }
        match (&self.t_lb, self.total_ms) {
            (Some((lb, why)), Some(t)) if *lb > 0.0 => {
                let _ = writeln!(
                    o,
                    "T_lb: {lb:.1} ms (set by {why}); total / T_lb = {:.2}",
                    t / lb
                );
            }
            (Some((lb, why)), _) => {
                let _ = writeln!(o, "T_lb: {lb:.1} ms (set by {why})");
            }
            (None, _) => {
                let why = self.t_lb_missing.as_deref().unwrap_or("unknown");
                let _ = writeln!(o, "T_lb: not known: {why}");
            }
        }
        let _ = writeln!(
            o,
            "rates: mean over each client's download; peak over the best {:.0} ms bin",
            self.bin_ms
        );
        for f in &self.clients {
            client_text(&mut o, f, tl);
        }
        o.push_str("\ncritical path\n");
        match critical_path(tl) {
            Some(lines) => {
                for l in lines {
                    let _ = writeln!(o, "  {l}");
                }
            }
            None => o.push_str("  no chunk was received\n"),
        }
        o
    }
}

fn size(b: u64) -> String {
    if b as f64 >= MIB {
        format!("{:.1} MiB", b as f64 / MIB)
    } else if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{}/s", size(r.round() as u64)))
}

fn per_peer(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    let v: Vec<String> = m.iter().map(|(p, b)| format!("{p} {}", size(*b))).collect();
    v.join(", ")
}

fn client_text(o: &mut String, f: &ClientFigures, tl: &Timeline) {
    let own = tl.owned_bytes(&f.name);
    let ms = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
    let _ = writeln!(
        o,
        "\n{}  (shares {}, downloaded {})",
        f.name,
        size(own),
        size(f.received)
    );
    let _ = writeln!(o, "  first chunk     {}", ms(f.first_chunk_ms));
    for (file, t) in &f.files {
        let _ = writeln!(o, "  {:<15} {t:.1} ms", file);
    }
    let _ = writeln!(o, "  every file      {}", ms(f.done_ms));
    let _ = writeln!(
        o,
        "  rate            mean {}, peak {}",
        rate(f.mean_rate),
        rate(f.peak_rate)
    );
    let _ = writeln!(o, "  received from   {}", per_peer(&f.from_peer));
    let _ = writeln!(o, "  sent to         {}", per_peer(&f.to_peer));
    if let Some(c) = &f.clock {
        let _ = writeln!(
            o,
            "  clock           offset {:.3} ms, error ±{:.3} ms (worst ±{:.3} ms)",
            c.offset_ms, c.error_ms, c.max_error_ms
        );
    }
    if f.md5_failed + f.timeouts > 0 {
        let _ = writeln!(
            o,
            "  problems        {} chunks failed MD5, {} requests timed out",
            f.md5_failed, f.timeouts
        );
    }
}

/// The chunk that arrived last, traced back hop by hop to its owner, and what followed it.
pub fn critical_path(tl: &Timeline) -> Option<Vec<String>> {
    let origin = tl.origin_ms();
    let s = |t: f64| format!("+{:.3} s", (t - origin) / 1000.0);
    let (who, last) = every_chunk(tl).max_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms))?;
    let owner = tl.files.get(&last.file).map(|f| f.owner.clone());
    let mut out = vec![format!(
        "last chunk: {}#{} at {who}, verified at {}, from {}",
        last.file,
        last.index,
        s(last.t_ms),
        last.from
    )];
    let req = last.t_ms - last.download_ms;
    out.push(format!(
        "  requested at {}; {:.1} ms from the request to the verified write (queued at the \
         sender, transfer, MD5 check, write)",
        s(req),
        last.download_ms
    ));
    // Back along the chain of holders to the owner.
    let mut chain = vec![format!("{who} at {}", s(last.t_ms))];
    let mut holder = last.from.clone();
    let mut held_since = None;
    for _ in 0..=tl.clients.len() {
        if Some(&holder) == owner.as_ref() {
            chain.push(format!("{holder} (owner)"));
            break;
        }
        let got = tl.clients.get(&holder).and_then(|c| {
            c.chunks
                .iter()
                .find(|x| x.file == last.file && x.index == last.index)
        });
        let Some(g) = got else {
            chain.push(format!("{holder} (no record of getting it)"));
            break;
        };
        held_since.get_or_insert(g.t_ms);
        chain.push(format!("{holder} at {}", s(g.t_ms)));
        holder = g.from.clone();
    }
    chain.reverse();
    out.push(format!("  path: {}", chain.join(" -> ")));
    let start = tl
        .clients
        .get(who)
        .and_then(|c| c.started_ms)
        .unwrap_or(origin);
    let available = held_since.unwrap_or(start).max(start);
    let wait = req - available;
    let source = &last.from;
    out.push(match held_since {
        Some(h) if wait <= PROMPT_MS => format!(
            "  it waited for {source} to get it (at {}): {who} asked {wait:.1} ms later",
            s(h)
        ),
        Some(h) => format!(
            "  {source} held it from {}; {who} asked {wait:.1} ms later: it waited for a \
             request slot (window or global cap full) or for its turn among the chunks",
            s(h)
        ),
        None => format!(
            "  the owner {source} held it from the start; {who} asked {wait:.1} ms after its \
             start: it waited for a request slot, for its turn, or for the chunk's digest"
        ),
    });
    let log = tl.clients.get(who)?;
    if let Some((_, t)) = log.files_done.iter().find(|(f, _)| *f == last.file) {
        out.push(format!(
            "then: {who} completed {} at {} ({:.1} ms after the chunk: fsync and \
             rename)",
            last.file,
            s(*t),
            t - last.t_ms
        ));
    }
    if let Some(t) = log.all_complete_ms {
        out.push(format!("      {who} held every file at {}", s(t)));
    }
    if let Some(t) = tl.finished_ms {
        out.push(format!("      the server ended the run at {}", s(t)));
    }
    Some(out)
}

/// The two charts: bytes held over time, and upload rate over time, one line per client.
pub fn svg(tl: &Timeline, r: &Report) -> String {
    let origin = tl.origin_ms();
    let span_s = (end_ms(tl) - origin).max(0.0) / 1000.0;
    let names = tl.client_names();
    let mut held = Vec::new();
    let mut upload = Vec::new();
    for name in &names {
        let own = tl.owned_bytes(name);
        let mut chunks: Vec<&Chunk> = tl
            .clients
            .get(name)
            .map(|c| c.chunks.iter().collect())
            .unwrap_or_default();
        chunks.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        // A step at each chunk (at each group of chunks, when there are very many).
        let mut pts = vec![(0.0, own as f64 / MIB)];
        let mut sum = own;
        let step = chunks.len().div_ceil(MAX_POINTS).max(1);
        for (i, c) in chunks.iter().enumerate() {
            sum += c.bytes;
            if (i + 1) % step == 0 || i + 1 == chunks.len() {
                let x = ((c.t_ms - origin) / 1000.0).max(0.0);
                let before = pts.last().map_or(0.0, |p| p.1);
                pts.push((x, before));
                pts.push((x, sum as f64 / MIB));
            }
        }
        pts.push((span_s, sum as f64 / MIB));
        held.push(Series {
            name: name.clone(),
            points: pts,
            data: vec![("final-bytes", sum.to_string())],
        });
        let bins = binned(tl, r.bin_ms, |_, c| c.from == *name);
        let w = r.bin_ms / 1000.0;
        let mut pts = Vec::with_capacity(2 * bins.len());
        for (i, b) in bins.iter().enumerate() {
            let v = *b as f64 / MIB / w;
            pts.push((i as f64 * w, v));
            pts.push((((i + 1) as f64 * w).min(span_s.max(w)), v));
        }
        let sent: u64 = bins.iter().sum();
        let peak = bins.iter().max().copied().unwrap_or(0) as f64 * 1000.0 / r.bin_ms;
        upload.push(Series {
            name: name.clone(),
            points: pts,
            data: vec![
                ("total-bytes", sent.to_string()),
                ("peak-bytes-per-s", format!("{peak:.0}")),
            ],
        });
    }
    let panels = [
        Panel {
            class: "held",
            title: "Bytes held (own files + verified downloads)".into(),
            y_label: "bytes held (MiB)".into(),
            series: held,
        },
        Panel {
            class: "upload",
            title: format!("Upload rate ({:.0} ms bins)", r.bin_ms),
            y_label: "upload rate (MiB/s)".into(),
            series: upload,
        },
    ];
    chart(
        "p2pshare run",
        "time since start (s)",
        span_s,
        &names,
        &panels,
    )
}

/// The `report` command: prints the report and writes the chart.
pub fn run(dir: &Path, links: Option<&Links>, svg_path: &Path) -> Result<i32, Error> {
    let tl = Timeline::read_dir(dir).map_err(Error::Usage)?;
    let r = Report::build(&tl, links);
    print!("{}", r.text(&tl, dir));
    std::fs::write(svg_path, svg(&tl, &r))
        .map_err(|e| Error::Failed(format!("cannot write {}: {e}", svg_path.display())))?;
    println!("\nchart: {}", svg_path.display());
    Ok(0)
}
