//! The broker-wide persistence settings (`--data-dir`, `--in-memory`, `--durability`,
//! `--data-max-mib`, `--data-segment-mib`, `--log-skip-damaged`) and how they become one
//! [`LogConfig`] per shard.

use std::path::PathBuf;

use super::{record, Durability, LogConfig};

/// Default data directory, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "shardmq-data";
/// Default disk cap for the whole broker, in MiB (split evenly between the shards).
pub const DATA_MAX_MIB_DEFAULT: u64 = 4096;
/// Default segment size, in MiB (lowered to a quarter of a shard's cap when that is smaller).
pub const DATA_SEGMENT_MIB_DEFAULT: u64 = 64;
/// What a record body holds beyond a message's packet and resolved topic: rkyv's fixed
/// fields and the properties blob's own header.
const RECORD_OVERHEAD_BYTES: u32 = 4096;

/// Persistence settings of the whole broker.
///
/// Process-wide, read-only: each shard derives its own [`LogConfig`] with
/// [`PersistConfig::shard_log_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistConfig {
    /// The data directory; `None` keeps everything in memory (`--in-memory`).
    pub data_dir: Option<PathBuf>,
    /// When acknowledgements may leave.
    pub durability: Durability,
    /// Disk cap of the whole broker (all shards' segments), in bytes.
    pub data_max_bytes: u64,
    /// Requested segment size, in bytes.
    pub segment_size_bytes: u64,
    /// Skip damaged records during recovery instead of refusing to start.
    pub skip_damaged: bool,
}

impl Default for PersistConfig {
    /// Persistent, in `shardmq-data/`, `sync`, 4 GiB, 64 MiB segments.
    fn default() -> PersistConfig {
        PersistConfig {
            data_dir: Some(PathBuf::from(DATA_DIR_DEFAULT)),
            durability: Durability::Sync,
            data_max_bytes: DATA_MAX_MIB_DEFAULT << 20,
            segment_size_bytes: DATA_SEGMENT_MIB_DEFAULT << 20,
            skip_damaged: false,
        }
    }
}

impl PersistConfig {
    /// Nothing is persisted.
    pub fn in_memory() -> PersistConfig {
        PersistConfig { data_dir: None, ..PersistConfig::default() }
    }

    /// Persistent in `dir` with the other settings at their defaults.
    pub fn in_dir(dir: impl Into<PathBuf>) -> PersistConfig {
        PersistConfig { data_dir: Some(dir.into()), ..PersistConfig::default() }
    }

    /// The largest record body a message of `packet_size_max_bytes` needs: its payload and
    /// properties fit in the packet, but its topic may not — a PUBLISH using a Topic Alias
    /// carries an empty topic and is stored with the resolved one, up to
    /// `topic_length_max_bytes` — plus rkyv's fixed fields.
    pub fn record_size_max_bytes(packet_size_max_bytes: u32, topic_length_max_bytes: u16) -> u32 {
        packet_size_max_bytes
            .saturating_add(u32::from(topic_length_max_bytes))
            .saturating_add(RECORD_OVERHEAD_BYTES)
    }

    /// The log configuration of `shard` of `shards`, or why the settings do not fit together
    /// (one line naming the flags). `None` when persistence is off.
    pub fn shard_log_config(
        &self,
        shard: u16,
        shards: u16,
        packet_size_max_bytes: u32,
        topic_length_max_bytes: u16,
    ) -> Result<Option<LogConfig>, String> {
        let Some(dir) = &self.data_dir else { return Ok(None) };
        let record_size_max_bytes =
            Self::record_size_max_bytes(packet_size_max_bytes, topic_length_max_bytes);
        let frame_max_bytes =
            record::align_frame(record::HEADER_BYTES + record_size_max_bytes as usize) as u64;
        let cap_bytes = self.data_max_bytes / u64::from(shards.max(1));
        let segment_size_bytes = self.segment_size_bytes.min(cap_bytes / 4).max(frame_max_bytes);
        let config = LogConfig {
            segment_size_bytes,
            disk_cap_bytes: cap_bytes,
            record_size_max_bytes,
            durability: self.durability,
            skip_damaged: self.skip_damaged,
            ..LogConfig::new(dir.clone(), shard)
        };
        config.validate().map_err(|e| {
            format!(
                "--data-max-mib {}: each of the {shards} shards gets {} KiB, too little for \
                 segments holding a packet of --max-packet-size {packet_size_max_bytes} ({e})",
                self.data_max_bytes >> 20,
                cap_bytes >> 10
            )
        })?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_split_between_shards_and_segments_follow_it() {
        let p = PersistConfig { data_max_bytes: 64 << 20, ..PersistConfig::in_dir("/d") };
        let c = p.shard_log_config(1, 2, 64 * 1024, 1024).unwrap().unwrap();
        assert_eq!(c.disk_cap_bytes, 32 << 20);
        assert_eq!(c.segment_size_bytes, 8 << 20, "a quarter of the shard's cap");
        assert_eq!(c.shard_dir(), PathBuf::from("/d/shard-1"));
        assert!(PersistConfig::in_memory().shard_log_config(0, 1, 1024, 64).unwrap().is_none());
    }

    /// A PUBLISH using a Topic Alias may fill the packet with payload and is stored under the
    /// resolved topic: the record must still fit (or its batch fails).
    #[test]
    fn a_record_holds_a_full_packet_stored_under_the_longest_topic() {
        let (packet_max, topic_max) = (16 * 1024u32, 8000u16);
        let body_max = PersistConfig::record_size_max_bytes(packet_max, topic_max) as usize;
        let stored = crate::log::record::MessageStored {
            msg_id: u64::MAX,
            topic: "t".repeat(usize::from(topic_max)),
            payload: vec![0; packet_max as usize],
            qos: 2,
            retain: true,
            properties: Vec::new(),
            received_at_ms: u64::MAX,
        };
        let mut buf = Vec::new();
        let r = crate::log::Record::MessageStored(stored);
        record::encode_into(&mut buf, crate::log::LogSeq(1), &r, false, body_max).unwrap();
    }

    #[test]
    fn a_cap_too_small_for_the_largest_packet_is_refused() {
        let p = PersistConfig { data_max_bytes: 2 << 20, ..PersistConfig::in_dir("/d") };
        let e = p.shard_log_config(0, 2, 1 << 20, 1024).unwrap_err();
        assert!(e.contains("--data-max-mib 2") && e.contains("--max-packet-size"), "{e}");
    }
}
