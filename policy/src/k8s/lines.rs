//! Where things start in the text: YAML document boundaries and the first line of
//! every list item, so each object read can name its line. serde_yaml and
//! serde_json give values without positions; this recovers the positions with a
//! light scan that only has to be right for well-formed input (the parsers have
//! already rejected anything else). When a scan cannot pair lines with items,
//! callers fall back to the line of the enclosing document.

/// Byte offset to 1-based line number.
pub(super) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    pub(super) fn line_of(&self, byte: usize) -> usize {
        self.starts.partition_point(|&s| s <= byte).max(1)
    }
}

/// One YAML document: its text with the `---` marker blanked out (so columns and
/// relative lines are unchanged) and the absolute line it starts on.
pub(super) struct YamlChunk {
    pub(super) text: String,
    pub(super) first_line: usize,
}

/// Splits a YAML stream at document markers (`---` at column 0).
pub(super) fn yaml_chunks(text: &str) -> Vec<YamlChunk> {
    let mut chunks = Vec::new();
    let mut current = YamlChunk {
        text: String::new(),
        first_line: 1,
    };
    for (i, line) in text.lines().enumerate() {
        if is_marker(line, "---") {
            chunks.push(std::mem::replace(
                &mut current,
                YamlChunk {
                    text: String::new(),
                    first_line: i + 1,
                },
            ));
            // Content may follow the marker on the same line (`--- {a: 1}`).
            current.text.push_str("   ");
            current.text.push_str(&line[3..]);
        } else if is_marker(line, "...") {
            // Document end: nothing after it belongs to this document.
        } else {
            current.text.push_str(line);
        }
        current.text.push('\n');
    }
    chunks.push(current);
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_item_start(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    t == "-" || t.starts_with("- ") || t.starts_with("-\t")
}

impl YamlChunk {
    /// The absolute line of the first line holding YAML, if any.
    pub(super) fn first_content_line(&self) -> Option<usize> {
        self.text
            .lines()
            .position(is_content)
            .map(|i| self.first_line + i)
    }

    /// Absolute lines on which the items of a top-level block-style `items:`
    /// sequence start (empty when there is none, or it is in flow style).
    pub(super) fn yaml_item_lines(&self) -> Vec<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let Some(top) = lines.iter().find(|l| is_content(l)).map(|l| indent(l)) else {
            return Vec::new();
        };
        let Some(key) = lines.iter().position(|l| {
            indent(l) == top
                && l.trim_start().strip_prefix("items:").is_some_and(|rest| {
                    let rest = rest.trim();
                    rest.is_empty() || rest.starts_with('#')
                })
        }) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut item_indent = None;
        for (i, line) in lines.iter().enumerate().skip(key + 1) {
            if !is_content(line) {
                continue;
            }
            let ind = indent(line);
            match item_indent {
                None if is_item_start(line) && ind >= top => {
                    item_indent = Some(ind);
                    out.push(self.first_line + i);
                }
                None => return Vec::new(),
                Some(c) if ind == c && is_item_start(line) => out.push(self.first_line + i),
                Some(_) if ind <= top => break,
                Some(_) => {}
            }
        }
        out
    }
}

/// Offset just past the JSON string starting at `i` (a `"`).
fn skip_string(bytes: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            _ => j += 1,
        }
    }
    bytes.len()
}

/// Where the values at `depth` inside the JSON value starting at `begin` start,
/// restricted (when `key` is set) to the array under that top-level key.
fn json_value_starts(text: &str, begin: usize, key: Option<&str>) -> Vec<usize> {
    let bytes = text.as_bytes();
    // Depth at which the wanted values sit: 1 for a bare array's elements, 2 for
    // the elements of a top-level object's array field.
    let want = if key.is_some() { 2 } else { 1 };
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut inside = key.is_none();
    let mut pending_key = false;
    let mut expect = false;
    let mut i = begin;
    while i < bytes.len() {
        let c = bytes[i];
        let starts_value = !matches!(c, b']' | b'}' | b',' | b':') && !c.is_ascii_whitespace();
        if starts_value && inside && expect && depth == want {
            out.push(i);
            expect = false;
        }
        match c {
            b'"' => {
                let end = skip_string(bytes, i);
                if depth == 1 && key.is_some_and(|k| text.get(i + 1..end - 1) == Some(k)) {
                    let rest = text[end..].trim_start();
                    pending_key = rest.starts_with(':');
                }
                i = end;
                continue;
            }
            b'[' | b'{' => {
                if depth == want - 1 && c == b'[' && (key.is_none() || pending_key) {
                    inside = true;
                    expect = true;
                }
                pending_key = false;
                depth += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth < want && key.is_some() {
                    inside = false;
                }
                if depth == 0 {
                    break;
                }
            }
            b',' => expect = inside && depth == want,
            b':' => {}
            c if c.is_ascii_whitespace() => {}
            _ => pending_key = false,
        }
        i += 1;
    }
    out
}

/// Offsets of the elements of a top-level JSON array starting at `begin`.
pub(super) fn json_element_lines(text: &str, begin: usize) -> Vec<usize> {
    json_value_starts(text, begin, None)
}

/// Offsets of the elements of the `items` array of the JSON object at `begin`.
pub(super) fn json_items_lines(text: &str, begin: usize) -> Vec<usize> {
    json_value_starts(text, begin, Some("items"))
}
