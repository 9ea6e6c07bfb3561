//! Where in the file a problem is: the line of a dotted key, and a suggestion for a mistyped one.

pub(super) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line where a dotted key (`schedule.cron`) is set, for errors found after parsing.
pub fn locate_key(text: &str, dotted: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut last_span = None;
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        if let Ok(index) = part.parse::<usize>() {
            item = item.as_array().and_then(|a| a.get(index)).map(|_| item)?;
            continue;
        }
        let table = item.as_table_like()?;
        let (key, value) = table.get_key_value(part)?;
        last_span = key.span().or(last_span);
        item = value;
    }
    last_span.map(|s| line_of_offset(text, s.start))
}

/// The dotted key whose value starts at `offset`, read from the text itself: for errors the TOML
/// parser raises before any key is known ("number too large to fit in target type"), so the file
/// cannot be parsed into a document to ask. Handles `[table]`, `[[array]]` (as `array[i]`),
/// inline tables and dotted keys; `None` when the line is not `key = value`.
pub(super) fn key_at_offset(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    if !text.is_char_boundary(offset) {
        return None;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let before = &text[line_start..offset];
    // The span may start at the value (`key = <here>`) or at the key (`<here>key = value`).
    let line = &text[line_start..line_end];
    let head = if before.contains('=') {
        before
    } else if let Some(eq) = line.find('=') {
        &line[..eq + 1]
    } else {
        // Inside a value that spans lines (`ports = [\n 1,\n 99999999999999999999,\n]`): the key
        // is on the nearest line above with one, unless a table header comes first.
        let above = text[..line_start].lines().rev().find(|l| {
            let l = l.trim_start();
            l.contains('=') || l.starts_with('[') && !l.starts_with("[ ")
        })?;
        let eq = above.find('=')?;
        &above[..eq + 1]
    };
    let mut parts: Vec<String> = Vec::new();
    for segment in head.split('{') {
        let Some(eq) = segment.rfind('=') else {
            continue;
        };
        let key = segment[..eq].rsplit(',').next().unwrap_or("").trim();
        let key = key.trim_matches(|c| c == '"' || c == '\'');
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return None;
        }
        parts.push(key.to_string());
    }
    if parts.is_empty() {
        return None;
    }
    if let Some(table) = table_at(&text[..line_start]) {
        parts.insert(0, table);
    }
    Some(parts.join("."))
}

/// The table the text ends in: `a.b` for `[a.b]`, `remote[1]` for the second `[[remote]]`.
fn table_at(text: &str) -> Option<String> {
    let header = |l: &str| -> Option<(bool, String)> {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            return Some((true, name.0.trim().to_string()));
        }
        let name = l.strip_prefix('[')?.split_once(']')?.0.trim();
        Some((false, name.to_string()))
    };
    let (array, name) = text.lines().rev().find_map(header)?;
    if !array {
        return Some(name);
    }
    let index = text
        .lines()
        .filter_map(header)
        .filter(|(a, n)| *a && *n == name)
        .count()
        .saturating_sub(1);
    Some(format!("{name}[{index}]"))
}

/// The line of `field` in the `index`-th `[[remote]]` table (or of the table's header).
pub(super) fn locate_remote_key(text: &str, index: usize, field: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let table = doc.get("remote")?.as_array_of_tables()?.get(index)?;
    let span = table
        .get_key_value(field)
        .and_then(|(k, _)| k.span())
        .or_else(|| table.span())?;
    Some(line_of_offset(text, span.start))
}

/// Turns serde's "unknown field `keep_dayly`, expected one of ..." into a suggestion of the
/// closest known name, which is what the operator actually needs.
pub(super) fn with_suggestion(message: &str) -> String {
    let message = message.trim_end();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3));
    match best {
        Some((_, c)) => format!("unknown key `{unknown}`; did you mean `{c}`?"),
        None => format!(
            "unknown key `{unknown}`; known keys: {}",
            candidates.join(", ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
