//! The run summary: what the server measured, as a human table and as JSON (written by hand:
//! the shape is flat and fixed, and a JSON crate would be the only one needing a derive).

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
        o.push_str("  \"clients\": [\n");
        for (i, c) in self.clients.iter().enumerate() {
            let files: Vec<String> = c.files.iter().map(|f| json_str(f)).collect();
            let _ = writeln!(
                o,
                "    {{\"id\": {}, \"name\": {}, \"addr\": {}, \"connect_ms\": {:.3}, \"done_ms\": {}, \"elapsed_ms\": {}, \
                 \"bytes_sent\": {}, \"bytes_received\": {}, \"files\": [{}], \"files_completed\": {}, \"complete\": {}}}{}",
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
            "{:<12} {:>12} {:>12} {:>12} {:>14} {:>14}",
            "client", "connect ms", "done ms", "elapsed ms", "sent bytes", "recv bytes"
        );
        for c in &self.clients {
            let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
            let _ = writeln!(
                o,
                "{:<12} {:>12.1} {:>12} {:>12} {:>14} {:>14}{}",
                c.name,
                c.connect_ms,
                f(c.done_ms),
                f(c.elapsed_ms),
                c.bytes_sent,
                c.bytes_received,
                if c.complete { "" } else { "  INCOMPLETE" }
            );
        }
        let _ = writeln!(o, "total: {:.1} ms", self.total_ms);
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
