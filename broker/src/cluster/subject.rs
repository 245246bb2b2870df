//! MQTT topics as NATS subjects, so NATS itself routes by interest.
//!
//! Each MQTT level is one NATS token under a prefix naming the kind of traffic
//! (`weir.0.` for messages sent once, `weir.1.` for messages kept in JetStream). A NATS
//! token cannot be empty and gives `.`, `*` and `>` (and whitespace) a meaning of their
//! own, so a level is escaped the way URLs are: `%` starts a two-digit hex escape, and an
//! empty level is the token `%`. The mapping is reversible, so a node rebuilds the topic
//! from the subject (nats-server's own MQTT support maps the same way in spirit, with
//! `//` for `.` and `/` for an empty level, but leaves `*` and `>` unescaped).
//!
//! Filters map `+` to `*` and `#` to `>`. `a/#` also matches `a` itself in MQTT, which
//! `a.>` does not in NATS, so [`filter_subjects`] gives the parent subject as well. The
//! rule that `#` and `+` in the first level do not match `$` topics is left to the local
//! topic trie, which every message received from NATS passes through anyway.

use std::fmt::Write;

/// The first token of every subject Weir uses.
pub const ROOT: &str = "weir";

/// Messages sent once, to whichever nodes want them now (QoS 0).
pub const ONCE: &str = "0";
/// Messages written to JetStream before their publisher is acknowledged (QoS 1 and 2).
pub const KEPT: &str = "1";

fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    // Most levels need no escape: printable ASCII other than the four.
    let plain = |b: &u8| matches!(b, 0x21..=0x7e) && !matches!(b, b'%' | b'.' | b'*' | b'>');
    if level.as_bytes().iter().all(plain) {
        out.push_str(level);
        return;
    }
    for c in level.chars() {
        match c {
            '%' | '.' | '*' | '>' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if c.is_whitespace() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

/// The subject a message on `topic` (a valid topic name) travels on, for `kind`.
pub fn topic_subject(kind: &str, topic: &str) -> String {
    let mut out = String::with_capacity(ROOT.len() + kind.len() + topic.len() + 8);
    out.push_str(ROOT);
    out.push('.');
    out.push_str(kind);
    levels(topic, &mut out);
    out
}

/// The first token of the subjects retained messages are kept under: a root of its
/// own, so that no node's interest in `weir.*.…` receives them as live messages.
pub const RETAINED_ROOT: &str = "weir_retained";

/// The subject the retained message of `topic` is kept under.
pub fn retained_subject(topic: &str) -> String {
    under(RETAINED_ROOT, topic)
}

/// The topic of a subject made by [`retained_subject`].
pub fn retained_topic(subject: &str) -> Option<String> {
    levels_topic(subject.strip_prefix(RETAINED_ROOT)?.strip_prefix('.')?)
}

fn under(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    levels(topic, &mut out);
    out
}

/// Each level of `topic` as a token, after a dot.
fn levels(topic: &str, out: &mut String) {
    for level in topic.split('/') {
        out.push('.');
        escape_level(level, out);
    }
}

/// The subjects to subscribe to so that every message matching `filter` (a valid,
/// non-shared topic filter) arrives, whatever its kind: the subject of the filter, and
/// for `.../#` with a level before it, that level's own subject too.
pub fn filter_subjects(filter: &str) -> Vec<String> {
    let mut out = format!("{ROOT}.*");
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "+" => out.push_str(".*"),
            "#" => {
                if out.len() > ROOT.len() + 2 {
                    parent = Some(out.clone());
                }
                out.push_str(".>");
            }
            level => {
                out.push('.');
                escape_level(level, &mut out);
            }
        }
    }
    let mut subjects = vec![out];
    subjects.extend(parent);
    subjects
}

/// The subject of a filter (from [`filter_subjects`]) narrowed to messages kept in
/// JetStream.
pub fn kept(filter_subject: &str) -> String {
    narrowed(filter_subject, KEPT)
}

/// The subject of a filter narrowed to QoS 0 messages.
pub fn once(filter_subject: &str) -> String {
    narrowed(filter_subject, ONCE)
}

fn narrowed(filter_subject: &str, kind: &str) -> String {
    let rest = filter_subject
        .strip_prefix(ROOT)
        .and_then(|s| s.strip_prefix(".*"))
        .unwrap_or("");
    format!("{ROOT}.{kind}{rest}")
}

/// The topic a subject made by [`topic_subject`] stands for, or `None` if it is not one.
pub fn subject_topic(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(ROOT)?.strip_prefix('.')?;
    let (_kind, levels) = rest.split_once('.')?;
    levels_topic(levels)
}

/// Unescapes dot-separated tokens back into a topic's levels.
fn levels_topic(levels: &str) -> Option<String> {
    let mut topic = String::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        if token == "%" {
            continue;
        }
        let mut bytes = Vec::with_capacity(token.len());
        let mut it = token.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hi = (it.next()? as char).to_digit(16)?;
                let lo = (it.next()? as char).to_digit(16)?;
                bytes.push((hi * 16 + lo) as u8);
            } else {
                bytes.push(b);
            }
        }
        topic.push_str(std::str::from_utf8(&bytes).ok()?);
    }
    Some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_subjects() {
        for topic in [
            "a",
            "a/b",
            "/",
            "//",
            "/a",
            "a/",
            "a//b",
            ".",
            "a.b/c",
            "50%",
            "%",
            "%25",
            "*",
            ">",
            "a/*/>",
            "with space",
            "tab\there",
            "$SYS/broker",
            "ünï/cødé",
        ] {
            let s = topic_subject(KEPT, topic);
            assert!(!s.contains(".."), "{topic:?} -> {s:?}: empty token");
            assert!(!s.ends_with('.'), "{topic:?} -> {s:?}");
            assert!(!s.contains(' ') && !s.contains('\t'), "{topic:?} -> {s:?}");
            let tokens: Vec<&str> = s.split('.').collect();
            assert!(
                tokens[2..].iter().all(|t| *t != "*" && *t != ">"),
                "{topic:?} -> {s:?}: a wildcard token"
            );
            assert_eq!(subject_topic(&s).as_deref(), Some(topic), "{s:?}");
            let r = retained_subject(topic);
            assert_eq!(retained_topic(&r).as_deref(), Some(topic), "{r:?}");
            assert!(!filter_subjects("#")
                .iter()
                .any(|f| f.starts_with(RETAINED_ROOT)));
        }
    }

    #[test]
    fn levels_map_one_to_one() {
        assert_eq!(topic_subject(ONCE, "a/b"), "weir.0.a.b");
        assert_eq!(topic_subject(KEPT, "/"), "weir.1.%.%");
        assert_eq!(topic_subject(KEPT, "a.b"), "weir.1.a%2Eb");
        assert_eq!(topic_subject(KEPT, "a/ b"), "weir.1.a.%20b");
    }

    #[test]
    fn filters_map_wildcards_and_add_the_parent_of_a_multi_level_one() {
        assert_eq!(filter_subjects("a/+/c"), ["weir.*.a.*.c"]);
        assert_eq!(filter_subjects("#"), ["weir.*.>"]);
        assert_eq!(filter_subjects("a/#"), ["weir.*.a.>", "weir.*.a"]);
        assert_eq!(filter_subjects("/#"), ["weir.*.%.>", "weir.*.%"]);
        assert_eq!(filter_subjects("+/#"), ["weir.*.*.>", "weir.*.*"]);
        assert_eq!(filter_subjects("a.b/*"), ["weir.*.a%2Eb.%2A"]);
    }

    /// NATS token matching on the mapped forms agrees with MQTT matching (except the
    /// `$` rule, which the local trie applies).
    #[test]
    fn nats_matching_of_mapped_forms_agrees_with_mqtt() {
        fn nats_match(filter: &str, subject: &str) -> bool {
            let f: Vec<&str> = filter.split('.').collect();
            let s: Vec<&str> = subject.split('.').collect();
            for (i, t) in f.iter().enumerate() {
                match *t {
                    ">" => return s.len() > i,
                    "*" if i < s.len() => {}
                    t if i < s.len() && s[i] == t => {}
                    _ => return false,
                }
            }
            f.len() == s.len()
        }
        let topics = [
            "a", "a/b", "a/b/c", "/", "a/", "/a", "a//b", "a.b", "x/a.b", "%",
        ];
        let filters = [
            "a", "a/#", "#", "+", "+/+", "a/+", "/#", "a/+/c", "+/#", "a.b", "%",
        ];
        for f in filters {
            for t in topics {
                let mqtt = crate::topic::matches(f, t);
                let nats = filter_subjects(f)
                    .iter()
                    .any(|fs| nats_match(fs, &topic_subject(ONCE, t)));
                assert_eq!(mqtt, nats, "filter {f:?} topic {t:?}");
            }
        }
    }
}
