//! Reads the logs of every node of a run (LOG_DIR/*.log) into one timeline on the server's
//! System Clock: the files of the run, and per client its chunks (when, from whom, how long),
//! its completed files, its clock estimates and its problems.
//!
//! A malformed line (no clock stamp, or a known event with a field that does not parse) is
//! skipped and counted, never fatal: a log cut short by a crash still gives a report. A
//! client's lines before its `connected` event are on its own clock, not the server's (it
//! learns the offset from the welcome), so they are skipped too, and counted apart.

use std::collections::BTreeMap;
use std::path::Path;

/// One log line taken apart: `[  1523.417 ms] NODE [WARN ]tag event=NAME key=value ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub t_ms: f64,
    pub node: String,
    pub event: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        let v = self
            .get(key)
            .ok_or_else(|| format!("{} has no {key}=", self.event))?;
        v.parse()
            .map_err(|_| format!("{} has a bad {key}={v}", self.event))
    }

    fn text(&self, key: &str) -> Result<String, String> {
        self.get(key)
            .map(str::to_string)
            .ok_or_else(|| format!("{} has no {key}=", self.event))
    }
}

fn is_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Reads a quoted value with Rust escapes (`reason="closed by peer"`); returns it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    let mut escaped = false;
    for (i, c) in it.by_ref() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => return Some((out, &s[i + 1..])),
            (true, 'n') => {
                out.push('\n');
                escaped = false;
            }
            (true, c) => {
                out.push(c);
                escaped = false;
            }
            (false, c) => out.push(c),
        }
    }
    None
}

/// The `key=value` fields after the tag. A word that is not `key=...` belongs to the value
/// before it (a file name with a space); `error=` runs to the end of the line.
fn fields(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        s = s.trim_start_matches(' ');
        if s.is_empty() {
            return Some(out);
        }
        let word_end = s.find(' ').unwrap_or(s.len());
        let key = s[..word_end]
            .split_once('=')
            .map(|(k, _)| k)
            .filter(|k| is_key(k));
        match key {
            Some("error") => {
                out.push(("error".into(), s[6..].to_string()));
                return Some(out);
            }
            Some(k) if s[k.len() + 1..].starts_with('"') => {
                let (v, rest) = quoted(&s[k.len() + 2..])?;
                out.push((k.to_string(), v));
                s = rest;
            }
            Some(k) => {
                out.push((k.to_string(), s[k.len() + 1..word_end].to_string()));
                s = &s[word_end..];
            }
            None => {
                let (_, v) = out.last_mut()?;
                v.push(' ');
                v.push_str(&s[..word_end]);
                s = &s[word_end..];
            }
        }
    }
}

/// Parses one line. `Ok(None)`: a well-formed line without an event (the summary table).
pub fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let rest = line.strip_prefix('[').ok_or("no clock stamp")?;
    let (stamp, rest) = rest.split_once(" ms] ").ok_or("no clock stamp")?;
    let t_ms: f64 = stamp
        .trim()
        .parse()
        .map_err(|_| format!("bad clock stamp {stamp:?}"))?;
    if !t_ms.is_finite() {
        return Err(format!("bad clock stamp {stamp:?}"));
    }
    let (node, rest) = rest.split_once(' ').ok_or("no message")?;
    let rest = rest
        .strip_prefix("WARN ")
        .or_else(|| rest.strip_prefix("ERROR "))
        .unwrap_or(rest);
    let Some((_tag, rest)) = rest.split_once(' ') else {
        return Ok(None);
    };
    if !rest.starts_with("event=") {
        return Ok(None);
    }
    let mut fields = fields(rest).ok_or("unterminated quoted value")?;
    let event = fields.remove(0).1;
    Ok(Some(Entry {
        t_ms,
        node: node.to_string(),
        event,
        fields,
    }))
}

/// A file of the run, from the server's `file_listed`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileRec {
    pub owner: String,
    pub size: u64,
    pub chunks: u32,
}

/// One verified chunk at a client.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub t_ms: f64,
    pub file: String,
    pub index: u32,
    pub from: String,
    pub bytes: u64,
    /// From the request to the verified write.
    pub download_ms: f64,
}

/// A clock estimate a client used (`clock_sync`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClockRec {
    pub t_ms: f64,
    pub offset_ms: f64,
    pub error_ms: f64,
    pub max_error_ms: f64,
}

/// What one client's log says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientLog {
    pub connected_ms: Option<f64>,
    /// When the client list arrived (the client could start).
    pub started_ms: Option<f64>,
    pub chunks: Vec<Chunk>,
    /// (file, when it was verified and renamed).
    pub files_done: Vec<(String, f64)>,
    pub all_complete_ms: Option<f64>,
    pub clock: Vec<ClockRec>,
    pub md5_failed: usize,
    pub timeouts: usize,
    pub exit_code: Option<i32>,
}

/// All the logs of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// The server sent the client list (the transfers could begin).
    pub start_ms: Option<f64>,
    /// The server's `run_finished`, and its total_ms.
    pub finished_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// When the server admitted each client.
    pub joined: BTreeMap<String, f64>,
    pub files: BTreeMap<String, FileRec>,
    pub clients: BTreeMap<String, ClientLog>,
    /// T_lb and what sets it, as the server logged it (`lower_bound`).
    pub lower_bound: Option<(f64, String)>,
    pub logs: usize,
    pub lines: usize,
    pub malformed: usize,
    /// The first few malformed lines: "FILE:LINE: why".
    pub malformed_examples: Vec<String>,
    /// Client lines before its welcome (on its own clock).
    pub local_clock_lines: usize,
}

impl Timeline {
    /// Reads every `*.log` in `dir` (server.log and one per client).
    pub fn read_dir(dir: &Path) -> Result<Timeline, String> {
        let rd =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log") && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(format!("no *.log files in {}", dir.display()));
        }
        let mut tl = Timeline::default();
        for p in paths {
            let bytes =
                std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let node = p.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
            let label = p.file_name().and_then(|s| s.to_str()).unwrap_or("?");
            tl.add_log(node, label, &text);
        }
        Ok(tl)
    }

    /// Adds the log of `node` (server or a client's name); `label` names it in messages.
    pub fn add_log(&mut self, node: &str, label: &str, text: &str) {
        self.logs += 1;
        let server = node == "server";
        let mut welcomed = server;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            self.lines += 1;
            let r = parse_line(line).and_then(|e| match e {
                Some(e) if server => self.server_event(&e),
                Some(e) => {
                    if e.event == "connected" {
                        welcomed = true;
                    }
                    if welcomed {
                        self.client_event(node, &e)
                    } else {
                        self.local_clock_lines += 1;
                        Ok(())
                    }
                }
                None => Ok(()),
            });
            if let Err(why) = r {
                self.malformed += 1;
                if self.malformed_examples.len() < 3 {
                    self.malformed_examples
                        .push(format!("{label}:{}: {why}", i + 1));
                }
            }
        }
    }

    fn server_event(&mut self, e: &Entry) -> Result<(), String> {
        match e.event.as_str() {
            "client_connected" => {
                self.joined.insert(e.text("client")?, e.t_ms);
            }
            "client_list_broadcast" => self.start_ms = Some(e.t_ms),
            "file_listed" => {
                let f = FileRec {
                    owner: e.text("owner")?,
                    size: e.num("size")?,
                    chunks: e.num("chunks")?,
                };
                self.files.insert(e.text("file")?, f);
            }
            "run_finished" => {
                self.finished_ms = Some(e.t_ms);
                self.total_ms = Some(e.num("total_ms")?);
            }
            "lower_bound" => {
                self.lower_bound = Some((e.num("t_lb_ms")?, e.text("binding")?));
            }
            _ => {}
        }
        Ok(())
    }

    fn client_event(&mut self, node: &str, e: &Entry) -> Result<(), String> {
        let c = self.clients.entry(node.to_string()).or_default();
        match e.event.as_str() {
            "connected" => c.connected_ms = Some(e.t_ms),
            "client_list_received" => c.started_ms = Some(e.t_ms),
            "chunk_received" => c.chunks.push(Chunk {
                t_ms: e.t_ms,
                file: e.text("file")?,
                index: e.num("index")?,
                from: e.text("from")?,
                bytes: e.num("bytes")?,
                download_ms: e.num("download_ms")?,
            }),
            "file_complete" => c.files_done.push((e.text("file")?, e.t_ms)),
            "all_complete" => c.all_complete_ms = Some(e.t_ms),
            "clock_sync" => c.clock.push(ClockRec {
                t_ms: e.t_ms,
                offset_ms: e.num("offset_ms")?,
                error_ms: e.num("error_ms")?,
                max_error_ms: e.num("max_error_ms")?,
            }),
            "chunk_md5_failed" => c.md5_failed += 1,
            "request_timeout" => c.timeouts += 1,
            "exit" => c.exit_code = Some(e.num("code")?),
            _ => {}
        }
        Ok(())
    }

    /// Time zero of the charts and the per-client times: the start, or else the first join.
    pub fn origin_ms(&self) -> f64 {
        self.start_ms
            .or_else(|| self.joined.values().copied().reduce(f64::min))
            .or_else(|| {
                self.clients
                    .values()
                    .filter_map(|c| c.connected_ms)
                    .reduce(f64::min)
            })
            .unwrap_or(0.0)
    }

    /// Bytes `client` started with: the files it owns.
    pub fn owned_bytes(&self, client: &str) -> u64 {
        self.files
            .values()
            .filter(|f| f.owner == client)
            .map(|f| f.size)
            .sum()
    }

    /// Every client of the run: those with a log, and those the server admitted.
    pub fn client_names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.clients.keys().cloned().collect();
        for j in self.joined.keys() {
            if !n.contains(j) {
                n.push(j.clone());
            }
        }
        n.sort();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_apart() {
        let e = parse_line(
            "[  1523.417 ms] client2 chunk event=chunk_received file=my file.bin index=7 from=client1 bytes=262144 download_ms=3.250",
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.t_ms, 1523.417);
        assert_eq!(e.node, "client2");
        assert_eq!(e.event, "chunk_received");
        assert_eq!(e.get("file"), Some("my file.bin"));
        assert_eq!(e.get("download_ms"), Some("3.250"));
        let w = parse_line(
            "[    10.000 ms] client1 WARN peer_error event=peer_disconnected peer=client3 reason=\"closed \\\"by\\\" peer\" error=broken pipe (os error 32)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(w.get("reason"), Some("closed \"by\" peer"));
        assert_eq!(w.get("error"), Some("broken pipe (os error 32)"));
        assert_eq!(
            parse_line("[  9.000 ms] server summary total: 176.8 ms"),
            Ok(None)
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for bad in [
            "",
            "garbage",
            "[",
            "[ ms] x",
            "[abc ms] server x event=y",
            "[NaN ms] server x event=y",
            "[1.0 ms] server",
            "[1.0 ms] server tag event=x reason=\"open",
            "[1.0 ms] server tag event=x =oops",
            "[1.0 ms] server tag event=x \u{0}=\u{1}",
        ] {
            let _ = parse_line(bad);
        }
        assert!(parse_line("[1.0 ms] server tag event=x reason=\"open").is_err());
        let mut t = Timeline::default();
        t.add_log(
            "client1",
            "client1.log",
            "[ 5.0 ms] client1 connected event=connected id=1\n\
             [ 6.0 ms] client1 chunk event=chunk_received file=f index=x from=c2 bytes=1 download_ms=1\n\
             not a line\n\
             [ 7.0 ms] client1 chunk event=chunk_received file=f index=3 from=c2 bytes=1 download_ms=1\n",
        );
        assert_eq!(t.malformed, 2);
        assert_eq!(t.clients["client1"].chunks.len(), 1);
        assert_eq!(
            t.malformed_examples[0],
            "client1.log:2: chunk_received has a bad index=x"
        );
    }

    #[test]
    fn lines_before_the_welcome_are_on_the_local_clock() {
        let mut t = Timeline::default();
        t.add_log(
            "client1",
            "client1.log",
            "[3600001.0 ms] client start event=client_start server=x\n\
             [ 5.0 ms] client1 connected event=connected id=1\n",
        );
        assert_eq!(t.local_clock_lines, 1);
        assert_eq!(t.clients["client1"].connected_ms, Some(5.0));
    }
}
