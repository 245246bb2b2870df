use crate::codec::SubscriptionOptions;
use crate::sync::{read, write};
use crate::topic;
use crate::FastMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// One subscription that matched a published topic.
#[derive(Debug, Clone)]
pub struct Target {
    pub client_id: Arc<str>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
    /// Shared subscriptions never get retained messages and ignore No Local.
    pub shared: bool,
}

#[derive(Default)]
struct Node {
    children: FastMap<Box<str>, Node>,
    subscribers: FastMap<Arc<str>, (SubscriptionOptions, Option<u32>)>,
    groups: FastMap<Box<str>, Group>,
}

/// A member of a shared subscription group.
type Member = (Arc<str>, SubscriptionOptions, Option<u32>);

#[derive(Default)]
struct Group {
    /// Shared with the publishers picking a member, who rank them after the trie's
    /// lock is released; a change of membership (rare) makes a new list.
    members: Arc<[Member]>,
    /// Round-robin position; atomic so picking a member needs only the read lock.
    next: Arc<AtomicUsize>,
}

/// Who wants a topic: every ordinary subscription, and each shared group to pick one
/// member of. Collected under the trie's read lock; the pick, which may ask the hooks
/// (a plugin call) and look at sessions, happens after it is released, so a SUBSCRIBE
/// waiting for the write lock never waits for a plugin.
#[derive(Default)]
pub struct Matches {
    pub targets: Vec<Target>,
    pub groups: Vec<SharedGroup>,
    /// Trie nodes whose ordinary subscribers are among `targets`.
    nodes: usize,
}

impl Matches {
    /// Whether no client can be among the targets twice: they all come from one
    /// node's subscribers (one subscription per client there) or from one group. Then
    /// there are no overlapping subscriptions to merge, which saves a map per message.
    pub fn distinct(&self) -> bool {
        self.nodes + self.groups.len() <= 1
    }
}

/// One shared subscription group that matched, to pick a member of.
pub struct SharedGroup {
    members: Arc<[Member]>,
    /// Where the round robin starts for this message.
    start: usize,
}

impl SharedGroup {
    /// The member this message goes to. `rank` rates a member: 0 may not receive the
    /// topic, 1 may (but is offline), 2 may and is connected; the best rank wins, in
    /// round-robin order among equals, and a group of 0s gets nothing.
    pub fn pick(&self, rank: &dyn Fn(&str) -> u8) -> Option<Target> {
        let n = self.members.len();
        let mut best: Option<(usize, u8)> = None;
        for i in (0..n).map(|i| (self.start + i) % n) {
            let r = rank(&self.members[i].0);
            if r > best.map_or(0, |b| b.1) {
                best = Some((i, r));
                if r >= 2 {
                    break;
                }
            }
        }
        let (client_id, options, id) = &self.members[best?.0];
        Some(Target {
            client_id: client_id.clone(),
            options: *options,
            id: *id,
            shared: true,
        })
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

#[derive(Default)]
pub struct Router {
    root: RwLock<Node>,
    /// Subscriptions held (a shared group's members each count), for metrics.
    count: AtomicUsize,
}

impl Router {
    /// Adds or replaces `client_id`'s subscription to `filter` (which may be
    /// `$share/group/...`, already validated). Returns whether it existed before.
    pub fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let (group, real) = match topic::parse_shared(filter) {
            Ok(Some(s)) => (Some(s.group), s.filter),
            _ => (None, filter),
        };
        let mut root = write(&self.root);
        let mut node = &mut *root;
        for level in real.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match group {
            None => node
                .subscribers
                .insert(client_id.clone(), (options, id))
                .is_some(),
            Some(g) => {
                let group = node.groups.entry(g.into()).or_default();
                let mut members = group.members.to_vec();
                let member = (client_id.clone(), options, id);
                let existed = match members.iter_mut().find(|m| &m.0 == client_id) {
                    Some(m) => {
                        *m = member;
                        true
                    }
                    None => {
                        members.push(member);
                        false
                    }
                };
                group.members = members.into();
                existed
            }
        };
        if !existed {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        existed
    }

    /// Removes `client_id`'s subscription to `filter`; returns whether there was one.
    pub fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let (group, real) = match topic::parse_shared(filter) {
            Ok(Some(s)) => (Some(s.group), s.filter),
            _ => (None, filter),
        };
        let levels: Vec<&str> = real.split('/').collect();
        let mut root = write(&self.root);
        let removed = remove(&mut root, &levels, group, client_id);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Subscriptions held now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Collects into `out` every subscription matching `topic` and every shared group
    /// to pick a member of. Holds the read lock only while it walks the trie.
    pub fn matches(&self, topic: &str, out: &mut Matches) {
        let levels: Vec<&str> = topic.split('/').collect();
        let root = read(&self.root);
        walk(&root, &levels, 0, topic.starts_with('$'), out);
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, client_id: &str) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(client_id).is_some(),
            Some(g) => {
                let Some(grp) = node.groups.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                let members: Vec<Member> = grp
                    .members
                    .iter()
                    .filter(|m| &*m.0 != client_id)
                    .cloned()
                    .collect();
                let removed = members.len() != before;
                grp.members = members.into();
                if grp.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, group, client_id);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

impl Router {
    /// The shared group `share` (`$share/group/filter`) with a member to pick, if it has
    /// members: a cluster hands a node a message for one of its groups by name.
    pub fn group(&self, share: &str) -> Option<SharedGroup> {
        let s = topic::parse_shared(share).ok().flatten()?;
        let root = read(&self.root);
        let mut node = &*root;
        for level in s.filter.split('/') {
            node = node.children.get(level)?;
        }
        let group = node.groups.get(s.group)?;
        let n = group.members.len();
        (n > 0).then(|| SharedGroup {
            members: group.members.clone(),
            start: group.next.fetch_add(1, Ordering::Relaxed) % n,
        })
    }
}

fn emit(node: &Node, out: &mut Matches) {
    out.nodes += !node.subscribers.is_empty() as usize;
    for (client_id, (options, id)) in &node.subscribers {
        out.targets.push(Target {
            client_id: client_id.clone(),
            options: *options,
            id: *id,
            shared: false,
        });
    }
    for group in node.groups.values() {
        let n = group.members.len();
        if n == 0 {
            continue;
        }
        out.groups.push(SharedGroup {
            members: group.members.clone(),
            start: group.next.fetch_add(1, Ordering::Relaxed) % n,
        });
    }
}

fn walk(node: &Node, levels: &[&str], i: usize, dollar: bool, out: &mut Matches) {
    // Wildcards in the first level never match a `$` topic (MQTT-4.7.2-1).
    let wildcards = !(i == 0 && dollar);
    if wildcards {
        if let Some(hash) = node.children.get("#") {
            emit(hash, out);
        }
    }
    let Some(level) = levels.get(i) else {
        emit(node, out);
        return;
    };
    if wildcards {
        if let Some(plus) = node.children.get("+") {
            walk(plus, levels, i + 1, dollar, out);
        }
    }
    if let Some(child) = node.children.get(*level) {
        walk(child, levels, i + 1, dollar, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every target, shared groups picked with `rank`.
    fn picked(r: &Router, topic: &str, rank: &dyn Fn(&str) -> u8) -> Vec<Target> {
        let mut m = Matches::default();
        r.matches(topic, &mut m);
        let distinct = m.distinct();
        let mut all = m.targets;
        all.extend(m.groups.iter().filter_map(|g| g.pick(rank)));
        if distinct {
            let mut ids: Vec<_> = all.iter().map(|t| t.client_id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), all.len(), "said distinct, found a client twice");
        }
        all
    }

    fn ids(r: &Router, topic: &str) -> Vec<String> {
        let mut out: Vec<String> = picked(r, topic, &|_| 2)
            .iter()
            .map(|t| format!("{}:{}", t.client_id, t.id.unwrap_or(0)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn trie_agrees_with_the_matcher() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "+", "a/+/c", "$SYS/#", "+/+", "/", "a//c",
        ];
        let topics = ["a/b", "a", "a/b/c", "b", "$SYS/x", "/", "a//c", "x/b", ""];
        let r = Router::default();
        for (i, f) in filters.iter().enumerate() {
            r.subscribe(
                &Arc::from(format!("c{i}")),
                f,
                SubscriptionOptions::default(),
                Some(i as u32),
            );
        }
        for t in topics {
            let mut want: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, t))
                .map(|(i, _)| format!("c{i}:{i}"))
                .collect();
            want.sort();
            assert_eq!(ids(&r, t), want, "topic {t:?}");
        }
    }

    #[test]
    fn unsubscribe_prunes() {
        let r = Router::default();
        let c: Arc<str> = Arc::from("c");
        assert!(!r.subscribe(&c, "a/b/c", SubscriptionOptions::default(), None));
        assert!(r.subscribe(&c, "a/b/c", SubscriptionOptions::default(), None));
        assert!(r.unsubscribe("c", "a/b/c"));
        assert!(!r.unsubscribe("c", "a/b/c"));
        assert!(read(&r.root).is_empty());
    }

    #[test]
    fn shared_groups_pick_one_member_round_robin() {
        let r = Router::default();
        for c in ["x", "y", "z"] {
            r.subscribe(
                &Arc::from(c),
                "$share/g/t/+",
                SubscriptionOptions::default(),
                None,
            );
        }
        r.subscribe(
            &Arc::from("solo"),
            "t/#",
            SubscriptionOptions::default(),
            None,
        );
        let mut counts = HashMap::new();
        for _ in 0..30 {
            let got = picked(&r, "t/1", &|_| 2);
            assert_eq!(got.len(), 2);
            for t in got.iter().filter(|t| t.shared) {
                *counts.entry(t.client_id.to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        // Offline members are skipped while an online one exists; members that may not
        // read the topic are never picked, and a group of only those gets nothing.
        for _ in 0..5 {
            for t in picked(&r, "t/1", &|c| if c == "z" { 2 } else { 1 }) {
                if t.shared {
                    assert_eq!(&*t.client_id, "z")
                }
            }
            for t in picked(&r, "t/1", &|c| if c == "x" { 0 } else { 1 }) {
                assert_ne!(&*t.client_id, "x");
            }
            let shared = picked(&r, "t/1", &|_| 0)
                .iter()
                .filter(|t| t.shared)
                .count();
            assert_eq!(shared, 0);
        }
        assert!(r.unsubscribe("x", "$share/g/t/+"));
    }
}
