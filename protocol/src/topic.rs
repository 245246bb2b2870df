//! Topic names and filters: validation and matching (MQTT 5.0 section 4.7).

/// Why a topic name or filter is not valid; the text says which rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicError(&'static str);

impl TopicError {
    /// The rule broken, for a log line or a reason string.
    pub fn reason(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for TopicError {}

/// A topic name is what a PUBLISH carries: no wildcards, at least one character, and
/// no longer than an MQTT string can be.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError("empty"));
    }
    if name.len() > u16::MAX as usize {
        return Err(TopicError("longer than 65535 bytes"));
    }
    // One pass over the name: every inbound PUBLISH is checked here.
    match name.bytes().find(|b| matches!(b, b'+' | b'#' | 0)) {
        None => Ok(()),
        Some(0) => Err(TopicError("U+0000 in a topic name")),
        Some(_) => Err(TopicError("wildcard in a topic name")),
    }
}

/// A filter is what a SUBSCRIBE carries: `+` fills a whole level, `#` fills a whole
/// level and must be the last one.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError("empty"));
    }
    if filter.len() > u16::MAX as usize {
        return Err(TopicError("longer than 65535 bytes"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError("'#' must be alone in the last level"));
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError("'+' must fill a whole level"));
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split into its group and real filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Parses a subscription filter that may be shared. `Ok(None)` for an ordinary filter
/// (not validated here).
pub fn parse_shared(filter: &str) -> Result<Option<Shared<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        if filter == "$share" {
            return Err(TopicError("'$share' without a group and filter"));
        }
        return Ok(None);
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return Err(TopicError("shared subscription without a filter"));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError("invalid shared subscription group name"));
    }
    validate_filter(filter)?;
    Ok(Some(Shared { group, filter }))
}

/// Does `filter` match `topic`? Filters starting with a wildcard do not match topics
/// starting with `$` (MQTT-4.7.2-1). One pass over both strings' bytes: plugins match
/// every message of a run against their rules, in WebAssembly, where splitting each
/// string into levels first cost more than the comparison.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    // `i` and `j` are where the current level starts in each; `j` past the end once
    // the topic has no level left.
    let (mut i, mut j) = (0, 0);
    loop {
        let f_end = level_end(f, i);
        let level = &f[i..f_end];
        if level == b"#" {
            return true;
        }
        if j > t.len() {
            return false;
        }
        let t_end = level_end(t, j);
        if level != b"+" && level != &t[j..t_end] {
            return false;
        }
        match (f_end == f.len(), t_end == t.len()) {
            (true, true) => return true,
            (true, false) => return false,
            _ => {}
        }
        (i, j) = (f_end + 1, t_end + 1);
    }
}

/// Where the level starting at `from` ends: the next `/`, or the end.
fn level_end(s: &[u8], from: usize) -> usize {
    s[from..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(s.len(), |p| from + p)
}

/// Does every topic `filter` can match also match `pattern`? For authorizing
/// subscriptions: a client allowed `a/#` may subscribe to `a/+/c` but not to `#`.
pub fn filter_within(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('/');
    let mut p = pattern.split('/');
    loop {
        match (f.next(), p.next()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), Some(_)) => return false,
            (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Number of levels, for a configured maximum.
pub fn levels(topic: &str) -> usize {
    topic.split('/').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("/").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("a/#").is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name(&"x".repeat(65_536)).is_err());
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "+/#", "$SYS/#",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##", "#/"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "", true),
            ("+/+", "/", true),
            ("a/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a", "a/b", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    /// What `matches` was before it compared bytes: level by level.
    fn matches_by_levels(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let (mut f, mut t) = (filter.split('/'), topic.split('/'));
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn matching_agrees_with_levels_on_every_small_case() {
        // Every filter and topic of up to four characters from these.
        let grow = |alphabet: &[char]| {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..4 {
                last = (last.iter())
                    .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        };
        let filters = grow(&['a', 'b', '/', '+', '#']);
        let topics = grow(&['a', 'b', '/', '$']);
        for f in filters.iter().filter(|f| validate_filter(f).is_ok()) {
            for t in &topics {
                assert_eq!(matches(f, t), matches_by_levels(f, t), "{f:?} vs {t:?}");
            }
        }
    }

    #[test]
    fn within() {
        assert!(filter_within("a/+/c", "a/#"));
        assert!(filter_within("a/b", "a/+"));
        assert!(!filter_within("#", "a/#"));
        assert!(!filter_within("a/+", "a/b"));
        assert!(filter_within("a/b", "a/b"));
        assert!(!filter_within("a/b/c", "a/b"));
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("a/b").unwrap(), None);
        assert_eq!(
            parse_shared("$share/g/a/+").unwrap(),
            Some(Shared {
                group: "g",
                filter: "a/+"
            })
        );
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
        assert!(parse_shared("$share/g/a#").is_err());
    }
}
