//! The run summary: what the server measured, as a human table and as JSON (written by hand:
//! the shape is flat and fixed, and a JSON crate would be the only one needing a derive).

use crate::links::LowerBound;
use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub struct ClientSummary {
    pub id: u32,
    pub name: String,
    pub addr: String,
    pub connect_ms: f64,
    pub done_ms: Option<f64>,
    pub elapsed_ms: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub files: Vec<String>,
    pub files_completed: u32,
    pub complete: bool,
    /// The client's last clock report (see `clock`): its offset to the System Clock, the bound
    /// on that offset's error, and the largest bound of any estimate it used; `None` if it
    /// never reported.
    pub clock_offset_ms: Option<f64>,
    pub clock_error_ms: Option<f64>,
    pub clock_max_error_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileSummary {
    pub name: String,
    pub owner: String,
    pub size: u64,
    pub chunks: u32,
    pub md5: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub clients: Vec<ClientSummary>,
    pub files: Vec<FileSummary>,
    pub chunk_size: u32,
    /// From the first client's connection to the last client's completion.
    pub total_ms: f64,
    /// System Clock when the summary was made.
    pub end_ms: f64,
    /// T_lb, when the link rates were given.
    pub lower_bound: Option<LowerBound>,
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "null".to_string(), |v| format!("{v:.3}"))
}

impl Summary {
    /// total_ms / T_lb, when T_lb is known and not zero.
    pub fn t_lb_ratio(&self) -> Option<f64> {
        let b = self.lower_bound.as_ref()?;
        (b.t_lb_ms > 0.0).then(|| self.total_ms / b.t_lb_ms)
    }

    /// Bytes each client started with (the sizes of the files it shares), by client.
    pub fn owned_bytes(&self) -> Vec<(String, u64)> {
        self.clients
            .iter()
            .map(|c| {
                let own = self.files.iter().filter(|f| f.owner == c.name);
                (c.name.clone(), own.map(|f| f.size).sum())
            })
            .collect()
    }

    /// Writes the JSON to `path` through `PATH.tmp` and a rename, so a reader never sees half
    /// of it; creates the parent directory if needed.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, path)
    }

    pub fn to_json(&self) -> String {
        let mut o = String::new();
        o.push_str("{\n  \"chunk_size\": ");
        let _ = write!(
            o,
            "{},\n  \"total_ms\": {:.3},\n  \"end_ms\": {:.3},\n",
            self.chunk_size, self.total_ms, self.end_ms
        );
        let lb = self.lower_bound.as_ref();
        let _ = write!(
            o,
            "  \"t_lb_ms\": {},\n  \"t_lb_ratio\": {},\n  \"t_lb_binding\": {},\n",
            opt(lb.map(|b| b.t_lb_ms)),
            opt(self.t_lb_ratio()),
            lb.map_or_else(|| "null".into(), |b| json_str(&b.binding))
        );
        o.push_str("  \"clients\": [\n");
        for (i, c) in self.clients.iter().enumerate() {
            let files: Vec<String> = c.files.iter().map(|f| json_str(f)).collect();
            let _ = writeln!(
                o,
                "    {{\"id\": {}, \"name\": {}, \"addr\": {}, \"connect_ms\": {:.3}, \"done_ms\": {}, \"elapsed_ms\": {}, \
                 \"bytes_sent\": {}, \"bytes_received\": {}, \"files\": [{}], \"files_completed\": {}, \"complete\": {}, \
                 \"clock_offset_ms\": {}, \"clock_error_ms\": {}, \"clock_max_error_ms\": {}}}{}",
                c.id,
                json_str(&c.name),
                json_str(&c.addr),
                c.connect_ms,
                opt(c.done_ms),
                opt(c.elapsed_ms),
                c.bytes_sent,
                c.bytes_received,
                files.join(", "),
                c.files_completed,
                c.complete,
                opt(c.clock_offset_ms),
                opt(c.clock_error_ms),
                opt(c.clock_max_error_ms),
                if i + 1 < self.clients.len() { "," } else { "" }
            );
        }
        o.push_str("  ],\n  \"files\": [\n");
        for (i, f) in self.files.iter().enumerate() {
            let _ = writeln!(
                o,
                "    {{\"name\": {}, \"owner\": {}, \"size\": {}, \"chunks\": {}, \"md5\": {}}}{}",
                json_str(&f.name),
                json_str(&f.owner),
                f.size,
                f.chunks,
                json_str(&f.md5),
                if i + 1 < self.files.len() { "," } else { "" }
            );
        }
        o.push_str("  ]\n}\n");
        o
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<12} {:>12} {:>12} {:>12} {:>14} {:>14} {:>9}",
            "client",
            "connect ms",
            "done ms",
            "elapsed ms",
            "sent bytes",
            "recv bytes",
            "clock ±ms"
        );
        for c in &self.clients {
            let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
            let clock = c
                .clock_max_error_ms
                .map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
            let _ = writeln!(
                o,
                "{:<12} {:>12.1} {:>12} {:>12} {:>14} {:>14} {:>9}{}",
                c.name,
                c.connect_ms,
                f(c.done_ms),
                f(c.elapsed_ms),
                c.bytes_sent,
                c.bytes_received,
                clock,
                if c.complete { "" } else { "  INCOMPLETE" }
            );
        }
        let _ = writeln!(o, "total: {:.1} ms", self.total_ms);
        if let (Some(b), Some(r)) = (&self.lower_bound, self.t_lb_ratio()) {
            let _ = writeln!(
                o,
                "T_lb: {:.1} ms (set by {}); total / T_lb = {r:.2}",
                b.t_lb_ms, b.binding
            );
        }
        for f in &self.files {
            let _ = writeln!(
                o,
                "file {} (owner {}, {} bytes, {} chunks) md5 {}",
                f.name, f.owner, f.size, f.chunks, f.md5
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
