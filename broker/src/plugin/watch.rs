//! Reloads a plugin when its `.wasm` file changes on disk.
//!
//! A file is acted on only once it has settled: the same size and modification time on
//! two polls in a row, so a file still being written is not picked up. The new
//! version must then compile, link and `init` before it replaces the old one (see
//! [`PluginChain::reload`]), so a truncated or broken file never serves. A file whose
//! content is what already runs (a `touch`) is left alone.

use super::PluginChain;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

type Signature = (u64, SystemTime);

fn signature(path: &std::path::Path) -> Option<Signature> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Starts the watcher thread; it ends when the chain is dropped.
pub fn watch(chain: &Arc<PluginChain>, every: Duration) {
    let chain: Weak<PluginChain> = Arc::downgrade(chain);
    let spawned = std::thread::Builder::new()
        .name("weir-plugin-watch".into())
        .spawn(move || {
            let mut known: HashMap<String, Option<Signature>> = HashMap::new();
            let mut settling: HashMap<String, Signature> = HashMap::new();
            if let Some(c) = chain.upgrade() {
                for (name, path) in c.sources() {
                    known.insert(name, signature(&path));
                }
            }
            loop {
                std::thread::sleep(every);
                let Some(c) = chain.upgrade() else { return };
                for (name, path) in c.sources() {
                    let now = signature(&path);
                    if known.get(&name).is_some_and(|k| *k == now) {
                        settling.remove(&name);
                        continue;
                    }
                    let Some(sig) = now else { continue };
                    if settling.get(&name) != Some(&sig) {
                        settling.insert(name, sig);
                        continue;
                    }
                    settling.remove(&name);
                    known.insert(name.clone(), Some(sig));
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    let hash = crate::hex(&Sha256::digest(&bytes));
                    if c.running_hash(&name).as_deref() != Some(hash.as_str()) {
                        tracing::info!(plugin = %name, "plugin file changed; reloading");
                        // The outcome is logged and counted by `reload`.
                        let _ = c.reload(&name);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the plugin file watcher; reload through the admin API or SIGHUP");
    }
}
