//! Differential: the single-pass envelope scanner must agree with serde_json on every input.
#![no_main]
use gatehouse::cluster::envelope::{parse, MessageError, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = parse(data);
    // serde_json's own recursion limit (128) is far above Icinga's 32.
    let theirs: Result<Value, _> = serde_json::from_slice(data);
    match (&ours, &theirs) {
        (Err(MessageError::InvalidJson(_)), Err(_)) => {}
        (Err(MessageError::TooDeep), Ok(v)) => assert!(depth(v) > MAX_DEPTH),
        (Err(MessageError::TooDeep), Err(_)) => {} // deep and broken: either verdict is fine
        (Err(MessageError::NotObject), Ok(v)) => assert!(!v.is_object()),
        (Ok(env), Ok(v)) => {
            assert!(depth(v) <= MAX_DEPTH);
            let o = v.as_object().expect("an accepted message is an object");
            let method = o.get("method").and_then(Value::as_str);
            assert_eq!(env.method.as_deref(), method);
            assert_eq!(env.has_id, o.get("id").is_some_and(|i| !i.is_null()));
        }
        // serde_json accepts duplicate keys (last wins); the scanner refuses a second
        // `method` or `params` on purpose, and a non-string `method` is ours to refuse.
        (Err(MessageError::InvalidJson(e)), Ok(_)) => {
            assert!(
                e.contains("duplicate field `method`")
                    || e.contains("duplicate field `params`")
                    || e.contains("`method` must be a string"),
                "{e}"
            )
        }
        (a, b) => panic!("scanner {a:?} vs serde {b:?}"),
    }
});
