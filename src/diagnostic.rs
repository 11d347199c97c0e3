//! Errors a person reads about a file they wrote: where (file:line:column), what is wrong,
//! and what to do about it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a text file, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it, so the location can be pasted into an editor.
    pub path: PathBuf,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column, counted in characters, of the offending text.
    pub column: usize,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub hint: Option<String>,
    /// The offending line itself, shown under the message with a caret.
    pub source_line: String,
    /// Whether the file is refused for it (an error) or only flagged (a warning).
    pub severity: Severity,
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file works, but a setting does not do what it seems to say.
    Warning,
}

impl Diagnostic {
    /// Locates `span` (byte offsets into `source`) and builds a diagnostic for it.
    pub fn at(
        path: &Path,
        source: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let offset = span.map_or(0, |span| span.start.min(source.len()));
        let before = source.get(..offset).unwrap_or(source);
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        let line = before.matches('\n').count() + 1;
        let column = before
            .get(line_start..)
            .map_or(1, |text| text.chars().count() + 1);
        let (source_line, hidden) = conceal(
            source
                .get(line_start..)
                .and_then(|rest| rest.lines().next())
                .unwrap_or(""),
            source.get(..line_start).unwrap_or(""),
        );
        // A parser's message may quote the value too.
        let hide = |text: String| match &hidden {
            Some((secret, shown)) => text.replace(secret.as_str(), shown),
            None => text,
        };
        Diagnostic {
            path: path.to_path_buf(),
            line,
            column,
            message: hide(message.into()),
            hint: hint.map(hide),
            source_line,
            severity: Severity::Error,
        }
    }

    /// The same diagnostic, as a warning.
    #[must_use]
    pub fn warning(mut self) -> Diagnostic {
        self.severity = Severity::Warning;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        writeln!(
            f,
            "{gutter}--> {}:{}:{}",
            self.path.display(),
            self.line,
            self.column
        )?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{number} | {}", self.source_line)?;
        // Tabs before the column stay tabs under it, so the caret lines up however wide a
        // terminal shows them.
        let lead: String = self
            .source_line
            .chars()
            .chain(std::iter::repeat(' '))
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{gutter} | {lead}^")?;
        if let Some(hint) = &self.hint {
            write!(f, "\n{gutter} = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Parts of a key whose value is a secret: a line setting one is never shown as written.
const SECRET_KEY_PARTS: [&str; 6] = [
    "passphrase",
    "password",
    "token",
    "secret",
    "keys",
    "webhook_url",
];

/// Whether `text` names a secret key anywhere.
fn mentions_secret(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| text.contains(part))
}

/// `line` (after the file's text `before` it) as a diagnostic may show it: the value of a
/// secret key (`webhook_passphrase`, `operator_token`, `signature_keys`, ...) replaced by
/// `<redacted>`, wherever on the line the key stands (an inline table too), a line that
/// continues a multi-line value of one (an array, a `"""` string) hidden whole, and the
/// password in a URL value (`database_url`, `redis_url`) masked; and, when something was
/// hidden, the value as written with what is shown instead, so a message quoting it can hide
/// it too.
fn conceal(line: &str, before: &str) -> (String, Option<(String, String)>) {
    let redacted = || "<redacted>".to_string();
    let inside_long_string = before.matches("\"\"\"").count() % 2 == 1;
    let trimmed = line.trim_start();
    let continues_a_value = !line.contains('=')
        && !trimmed.is_empty()
        && !trimmed.starts_with('[')
        && !trimmed.starts_with('#');
    let continued_key_is_secret = || {
        before
            .lines()
            .rev()
            .find(|earlier| earlier.contains('=') && !earlier.trim_start().starts_with('#'))
            .is_some_and(|earlier| mentions_secret(earlier.split('=').next().unwrap_or("")))
    };
    if inside_long_string || (continues_a_value && continued_key_is_secret()) {
        let written = written_value(trimmed);
        let hidden = (!written.is_empty()).then(|| (written.to_string(), redacted()));
        return (redacted(), hidden);
    }
    let Some((key, value)) = line.split_once('=') else {
        return (line.to_string(), None);
    };
    let written = written_value(value);
    // Every key the line sets (an inline table sets several); a URL's query is not a key.
    let mut keys = line.split('=');
    keys.next_back();
    if keys.any(|key| !key.contains("://") && mentions_secret(key)) {
        let hidden = (!written.is_empty()).then(|| (written.to_string(), redacted()));
        (format!("{key}= <redacted>"), hidden)
    } else if value.contains("://") && !STORE_URL_KEYS.contains(&key.trim()) {
        // Any other URL may carry a token in its path (a Slack or Discord webhook): only
        // its scheme and host are shown.
        let shown = url_host_only(written);
        let hidden = (shown != written).then(|| (written.to_string(), shown.clone()));
        (format!("{key}= \"{shown}\""), hidden)
    } else if value.contains("://") {
        let shown = crate::store::redact(written);
        let hidden = (shown != written).then(|| (written.to_string(), shown));
        (format!("{key}={}", crate::store::redact(value)), hidden)
    } else {
        (line.to_string(), None)
    }
}

/// The keys whose URLs are shown with only their password masked: their paths name a
/// database, which a diagnostic should show.
const STORE_URL_KEYS: [&str; 2] = ["database_url", "redis_url"];

/// `url` with everything after its host hidden: `https://hooks.example/<redacted>`.
fn url_host_only(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".to_string();
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A user or password before the host goes too.
    let host = host.rsplit('@').next().unwrap_or(host);
    match rest.len() > host.len() {
        true => format!("{scheme}://{host}/<redacted>"),
        false => format!("{scheme}://{host}"),
    }
}

/// The value a `key = value` line's right side writes: inside its quotes, or up to the first
/// space or comment.
fn written_value(value: &str) -> &str {
    let value = value.trim_start();
    match value.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or(quoted),
        None => value
            .split(|c: char| c.is_whitespace() || c == '#' || c == ',' || c == ']')
            .next()
            .unwrap_or(value),
    }
}

/// Gathers what is wrong with one file while it is checked: errors, which refuse it, and
/// warnings, which do not.
#[derive(Debug)]
pub struct Collector<'a> {
    /// The file as the user named it.
    pub path: &'a Path,
    /// Its text.
    pub source: &'a str,
    /// Problems that make the file unusable.
    pub errors: Vec<Diagnostic>,
    /// Settings that work but do not do what they seem to say.
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    /// Nothing found yet in `source`, read from `path`.
    pub fn new(path: &'a Path, source: &'a str) -> Collector<'a> {
        Collector {
            path,
            source,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error at `span`; returns it, for a caller that must hide part of its line.
    pub fn report(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> &mut Diagnostic {
        let diagnostic = Diagnostic::at(self.path, self.source, span, message, hint);
        self.errors.push(diagnostic);
        let last = self.errors.len() - 1;
        &mut self.errors[last]
    }

    /// Records a warning at `span`.
    pub fn warn(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let diagnostic = Diagnostic::at(self.path, self.source, span, message, hint);
        self.warnings.push(diagnostic.warning());
    }

    /// `value` when no error was found, else every error in file order.
    pub fn finish<T>(mut self, value: Option<T>) -> Result<T, Diagnostics> {
        self.errors
            .sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(Diagnostics(self.errors)),
        }
    }
}

/// A file read as text, or why it could not be.
#[derive(Debug)]
pub enum ReadText {
    /// The operating system could not read it.
    Io(std::io::Error),
    /// It was read, but is not UTF-8 text: located at the first byte that is not.
    NotText(Diagnostics),
}

/// Reads `path` as UTF-8 text. A file that is not text (a binary, another encoding) is an
/// invalid file located at its first offending byte, not an I/O failure.
pub fn read_text(path: &Path) -> Result<String, ReadText> {
    let bytes = std::fs::read(path).map_err(ReadText::Io)?;
    String::from_utf8(bytes).map_err(|error| {
        let offset = error.utf8_error().valid_up_to();
        let bytes = error.as_bytes();
        let valid = String::from_utf8_lossy(bytes.get(..offset).unwrap_or_default());
        // The line up to the bad byte, and what follows it as far as it is text.
        let rest = String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default());
        // Control bytes shown as `?`, one byte for one, so the caret still lines up.
        let source: String = format!("{valid}{}", rest.lines().next().unwrap_or(""))
            .chars()
            .map(|c| if c.is_control() && c != '\t' && c != '\n' { '?' } else { c })
            .collect();
        let byte = bytes.get(offset).copied().unwrap_or_default();
        Diagnostics(vec![Diagnostic::at(
            path,
            &source,
            Some(valid.len()..valid.len()),
            format!("the file is not UTF-8 text: byte 0x{byte:02x} at offset {offset}"),
            Some("a policy or deployment file is TOML text in UTF-8; was a binary or another encoding given?".into()),
        )])
    })
    .map_err(ReadText::NotText)
}

/// All problems found in one file, in the order they appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A hint for an unknown `name`: the closest known one, if any is close, then all of them.
/// `what` names the list, for example "the failure kinds".
pub fn did_you_mean(name: &str, known: &[&str], what: &str) -> String {
    let all = known.join(", ");
    match closest(name, known.iter().copied()) {
        Some(near) => {
            let mut sentence = what.chars();
            let capitalised: String = sentence
                .next()
                .map(|first| first.to_uppercase().chain(sentence).collect())
                .unwrap_or_default();
            format!("did you mean `{near}`? {capitalised} are: {all}")
        }
        None => format!("{what} are: {all}"),
    }
}

/// Suggests the closest of `known` to a misspelt `name`, for "did you mean" hints.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= candidate.len() / 3 + 1)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters; names here are short, so the quadratic cost is
/// irrelevant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_and_column() {
        let source = "a = 1\nbb = 2\n";
        let d = Diagnostic::at(Path::new("f.toml"), source, Some(11..12), "bad", None);
        assert_eq!((d.line, d.column, d.source_line.as_str()), (2, 6, "bb = 2"));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            closest("db_unavialable", ["db_unavailable", "unexpected"]),
            Some("db_unavailable")
        );
        assert_eq!(closest("banana", ["db_unavailable", "unexpected"]), None);
    }
}
