//! The `DeleteResponse` a shim's `delete` prints on stdout (protobuf,
//! containerd's `containerd.task.v2.DeleteResponse`), for when no delegate
//! can answer.

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};

/// What a shim reports for a process killed with SIGKILL, as the Go shims do.
pub const KILLED_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// The encoded response: pid 0, exit status 137, exited now.
pub fn dead_shim_delete() -> Result<Vec<u8>, containerd_shim_protos::protobuf::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(now.subsec_nanos()).unwrap_or(0);
    let mut r = DeleteResponse::new();
    r.pid = 0;
    r.exit_status = KILLED_STATUS;
    r.exited_at = MessageField::some(ts);
    r.write_to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_containerd_would() {
        let b = dead_shim_delete().unwrap();
        let r = DeleteResponse::parse_from_bytes(&b).unwrap();
        assert_eq!(r.exit_status, 137);
        assert_eq!(r.pid, 0);
        let secs = r.exited_at.seconds;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - secs).abs() < 5, "{secs} vs {now}");
        // Field 2 (exit_status) varint 137 = 0x10 0x89 0x01; field 3 message.
        assert_eq!(&b[..3], &[0x10, 0x89, 0x01]);
        assert_eq!(b[3], 0x1a);
    }
}
