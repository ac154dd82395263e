//! Fuzz target `bodies`: every message body type parsed from arbitrary
//! bytes.
//!
//! Checks: `body::from_json` never panics, for any type; what parses
//! serializes and parses back to the same value; an error names the
//! expectation; the agent's codec (`body::decode`, `body::encode`) reads
//! the same values and writes the same bytes as miniserde.

use spore_protocol::body::{self, *};
use spore_protocol::json::{Decode, Encode};

fn round_trip<T>(data: &[u8], what: &'static str)
where
    T: miniserde::Serialize + miniserde::Deserialize + Encode + Decode + PartialEq + std::fmt::Debug,
{
    let ours = body::decode::<T>(data, what);
    match body::from_json::<T>(data, what) {
        Ok(v) => {
            assert_eq!(ours.as_ref(), Ok(&v), "the agent's codec reads what miniserde reads");
            let json = body::to_json(&v);
            assert_eq!(body::encode(&v), json, "the agent's codec writes what miniserde writes");
            let back: T = body::from_json(&json, what).expect("what parsed must parse again once serialized");
            assert_eq!(back, v);
            assert_eq!(body::to_json(&back), json, "serialization is stable");
        }
        Err(e) => {
            assert_eq!(e.what, what);
            assert_eq!(ours.err(), Some(e), "the agent's codec rejects what miniserde rejects");
        }
    }
}

fn probe<T: miniserde::Deserialize + Decode + PartialEq + std::fmt::Debug>(data: &[u8], what: &'static str) {
    let ours = body::decode::<T>(data, what);
    match body::from_json::<T>(data, what) {
        Ok(v) => assert_eq!(ours, Ok(v), "the agent's codec reads what miniserde reads"),
        Err(e) => {
            assert_eq!(e.what, what);
            assert_eq!(ours.err(), Some(e), "the agent's codec rejects what miniserde rejects");
        }
    }
}

/// The fuzz body.
pub fn run(data: &[u8]) {
    round_trip::<Hello>(data, "hello");
    round_trip::<CallOp>(data, "call");
    round_trip::<Empty>(data, "empty");
    round_trip::<InfoReply>(data, "info");
    round_trip::<ExecArgs>(data, "exec");
    round_trip::<ExecReply>(data, "exec reply");
    round_trip::<PathArgs>(data, "path");
    round_trip::<ReadReply>(data, "read reply");
    round_trip::<WriteArgs>(data, "write");
    round_trip::<WriteReply>(data, "write reply");
    round_trip::<FanoutArgs>(data, "fanout");
    round_trip::<FanoutResult>(data, "fanout result");
    round_trip::<FanoutReply>(data, "fanout reply");
    round_trip::<StatArgs>(data, "stat");
    round_trip::<StatReply>(data, "stat reply");
    round_trip::<DirEntry>(data, "entry");
    round_trip::<ListReply>(data, "list");
    round_trip::<RemoveArgs>(data, "remove");
    round_trip::<ConnectArgs>(data, "connect");
    round_trip::<ConnectReply>(data, "connect reply");
    round_trip::<StreamOpen>(data, "stream open");
    round_trip::<Ack>(data, "ack");
    round_trip::<ErrorReply>(data, "error");
    round_trip::<AddRoute>(data, "ADD_ROUTE");
    round_trip::<DelRoute>(data, "DEL_ROUTE");
    round_trip::<AllocatedId>(data, "ALLOCATE_ID");
    round_trip::<LogRecord>(data, "FORWARD_LOG");
    round_trip::<ReadArgs>(data, "read");
    round_trip::<MkdirArgs>(data, "mkdir");
    round_trip::<SymlinkArgs>(data, "symlink");
    round_trip::<ReadLinkReply>(data, "read_link reply");
    probe::<MaybeError>(data, "reply");
    probe::<Control>(data, "control");
}
