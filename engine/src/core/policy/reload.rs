//! A reload's new credentials and rules, applied on the shard (`reload.rs` builds them once;
//! `io/control.rs` hands them to every shard).
//!
//! - Password file, users file, SCRAM, anonymous access, ACL and `acl_deny_publish`, the
//!   global ones and every listener's own, are swapped at once (the shard sees the old set or the new one, never a mix); the
//!   password-check cache is emptied (a changed password must not log in from it).
//! - Existing connections are judged by the new rules from their next PUBLISH (the check
//!   reads the current rules), and every subscription's coverage is decided again: one the
//!   new rules no longer fully cover is checked per message, so it stops receiving what they
//!   deny. Connections stay up; who is connected as whom does not change.
//!
//! Shard-local.

use crate::core::auth::AuthConfig;
use crate::core::shard::ShardCore;

impl ShardCore {
    /// Applies reloaded authentication and authorisation settings. The shard's random
    /// generator and its password budget stay as they are.
    pub fn apply_auth_reload(&mut self, fresh: &AuthConfig) {
        let acl_changed = self.config.auth.acls_differ(fresh);
        let seed = self.config.auth.rng_seed;
        let rounds = self.config.auth.password_rounds_per_sec;
        // The live connection count is the running one, whatever the new settings.
        let mut quotas = fresh.quotas.clone();
        quotas.connected = self.config.auth.quotas.connected.clone();
        quotas.listener_connected = self.config.auth.quotas.listener_connected.clone();
        self.config.auth =
            AuthConfig { rng_seed: seed, password_rounds_per_sec: rounds, quotas, ..fresh.clone() };
        self.password_checks.forget();
        if acl_changed {
            let mut slots = Vec::new();
            self.sessions.slots(&mut slots);
            for slot in slots {
                self.refresh_acl_coverage(slot);
            }
        }
    }
}
