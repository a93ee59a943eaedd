//! The `io.kata-sriov.networks` parser on arbitrary text: never panics,
//! everything it accepts is within the limits and valid, and the accepted
//! requests serialize to a JSON form that parses back to the same value.
#![no_main]

use kata_sriov::policy::request::{
    parse_request, request_from_annotations, MAX_REQUESTS, MAX_REQUEST_BYTES, REQUEST_ANNOTATION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_request(text);
    match &parsed {
        Ok(reqs) => {
            assert!(!reqs.is_empty() && reqs.len() <= MAX_REQUESTS);
            for (i, r) in reqs.iter().enumerate() {
                assert!(r.l3.validate().is_ok());
                assert!(r.mac.is_none_or(|m| m.is_assignable()));
                assert!(r
                    .pool
                    .as_str()
                    .parse::<kata_sriov::policy::request::PoolName>()
                    .is_ok());
                if let Some(n) = &r.l3.name {
                    assert!(reqs[..i].iter().all(|o| o.l3.name.as_ref() != Some(n)));
                }
            }
            let json = serde_json::to_string(reqs).expect("requests serialize");
            if json.len() <= MAX_REQUEST_BYTES {
                let again = parse_request(&json)
                    .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
                assert_eq!(&again, reqs);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(REQUEST_ANNOTATION), "{msg}");
            // One readable line, whatever the input.
            assert!(!msg.contains(['\n', '\r']) && msg.len() < 1000, "{msg}");
        }
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(REQUEST_ANNOTATION.to_owned(), text.into());
    let via_map = request_from_annotations(&annotations);
    assert_eq!(via_map.ok().flatten(), parsed.ok());
});
