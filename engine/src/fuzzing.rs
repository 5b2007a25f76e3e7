//! Entry points for the fuzz targets (`fuzz-targets/`): decoders that are otherwise internal,
//! with the properties a target asserts. Not an API for anything else.

use crate::checkpoint::{self, CheckpointRef};

/// Decodes a checkpoint; if it is valid, encodes what was decoded and checks that this decodes
/// to the same state. Returns whether `buf` was a valid checkpoint of volume `uuid`.
///
/// Panics if the round trip loses or changes anything: encode and decode disagree.
pub fn checkpoint_round_trip(buf: &[u8], uuid: &[u8; 16]) -> bool {
    let Some(cp) = checkpoint::decode(buf, uuid) else {
        return false;
    };
    let again = checkpoint::encode(&CheckpointRef {
        uuid,
        next_seq: cp.next_seq,
        serial: cp.serial,
        size: cp.size,
        map: &cp.map,
        segs: &cp.segs,
        snaps: &cp.snaps,
        head_parent: cp.head_parent,
        next_snap_id: cp.next_snap_id,
        detached: cp.detached,
    });
    let Some(mut back) = checkpoint::decode(&again, uuid) else {
        panic!("a decoded checkpoint re-encodes to bytes that do not decode");
    };
    // Re-encoding always writes the exclusive counters (as zeros if the input had none).
    back.exclusive_known = cp.exclusive_known;
    assert_eq!(
        format!("{cp:?}"),
        format!("{back:?}"),
        "checkpoint changed in a decode-encode-decode round trip"
    );
    true
}
