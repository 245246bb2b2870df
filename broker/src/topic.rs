//! Topic names and filters: validation and matching (MQTT 5.0 section 4.7).

use crate::codec::Error;

/// A topic name is what a PUBLISH carries: no wildcards, at least one character.
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::TopicName("empty"));
    }
    if name.len() > u16::MAX as usize {
        return Err(Error::TopicName("longer than 65535 bytes"));
    }
    if name.contains(['+', '#']) {
        return Err(Error::TopicName("wildcard in a topic name"));
    }
    Ok(())
}

/// A filter is what a SUBSCRIBE carries: `+` fills a whole level, `#` fills a whole
/// level and must be the last one.
pub fn validate_filter(filter: &str) -> Result<(), Error> {
    if filter.is_empty() {
        return Err(Error::TopicFilter("empty"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(Error::TopicFilter("'#' must be alone in the last level"));
        }
        if level.contains('+') && level != "+" {
            return Err(Error::TopicFilter("'+' must fill a whole level"));
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split into its group and real filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Parses a subscription filter that may be shared. `Ok(None)` for an ordinary filter.
pub fn parse_shared(filter: &str) -> Result<Option<Shared<'_>>, Error> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        if filter == "$share" {
            return Err(Error::TopicFilter("'$share' without a group and filter"));
        }
        return Ok(None);
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return Err(Error::TopicFilter("shared subscription without a filter"));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(Error::TopicFilter("invalid shared subscription group name"));
    }
    validate_filter(filter)?;
    Ok(Some(Shared { group, filter }))
}

/// Does `filter` match `topic`? Filters starting with a wildcard do not match topics
/// starting with `$` (MQTT-4.7.2-1). Used where a trie walk is not worth it: retained
/// messages on subscribe and tests.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
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

/// Number of levels, for the configured maximum.
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
