use super::*;
use proptest::prelude::*;

fn decode_all(chunks: &[&[u8]]) -> Vec<Event> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
    }
    d.finish();
    while let Some(e) = d.next_event().unwrap() {
        out.push(e);
    }
    out
}

fn datas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data_str().unwrap().to_owned())
        .collect()
}

#[test]
fn several_events_in_one_frame_with_any_line_ending() {
    let ev = decode_all(&[b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata:d\n\n"]);
    assert_eq!(datas(&ev), ["a", "b", "c", "d"]);
}

#[test]
fn event_split_across_frames_even_inside_crlf() {
    let ev = decode_all(&[b"da", b"ta: hel", b"lo\r", b"\n", b"\r", b"\n"]);
    assert_eq!(datas(&ev), ["hello"]);
}

#[test]
fn multi_line_data_comments_and_fields() {
    let ev = decode_all(&[
        b": keep-alive\nevent: update\nid: 7\nretry: 1500\ndata: one\ndata:two\nunknown: x\n\n",
    ]);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].data, "one\ntwo");
    assert_eq!(ev[0].event.as_deref(), Some("update"));
    assert_eq!(ev[0].id.as_deref(), Some("7"));
    assert_eq!(ev[0].retry, Some(1500));
}

#[test]
fn last_event_without_blank_line_is_delivered_at_the_end() {
    assert_eq!(
        datas(&decode_all(&[b"data: x\n\ndata: last"])),
        ["x", "last"]
    );
    assert_eq!(datas(&decode_all(&[b"data: last\r"])), ["last"]);
}

#[test]
fn bom_and_events_without_data_are_skipped() {
    assert_eq!(
        datas(&decode_all(&[b"\xEF\xBB\xBFdata: a\n\nevent: x\n\n"])),
        ["a"]
    );
}

#[test]
fn oversized_event_is_an_error_not_a_buffer() {
    let mut d = Decoder::new().max_event_bytes(64);
    d.push(Bytes::from(vec![b'a'; 100]));
    assert!(matches!(
        d.next_event(),
        Err(SseError::TooLarge { limit: 64 })
    ));
    assert!(d.buffered() == 0);
    let mut d = Decoder::new().max_event_bytes(64);
    let mut err = None;
    for _ in 0..20 {
        d.push(Bytes::from_static(b"data: 0123456789\n"));
        if let Err(e) = d.next_event() {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(SseError::TooLarge { .. })));
}

#[test]
fn single_line_data_is_zero_copy() {
    let input = Bytes::from_static(b"data: {\"x\":1}\n\n");
    let mut d = Decoder::new();
    d.push(input.clone());
    let ev = d.next_event().unwrap().unwrap();
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    assert!(range.contains(&(ev.data.as_ptr() as usize)));
}

#[test]
fn encode_splits_lines_and_round_trips() {
    assert_eq!(encode_data(b"a\nb", LineEnding::Lf), "data: a\ndata: b\n\n");
    let ev = Event {
        event: Some("e".into()),
        data: Bytes::from_static(b"x\r\ny"),
        id: Some("1".into()),
        retry: Some(5),
    };
    let back = decode_all(&[&encode(&ev, LineEnding::CrLf)]);
    assert_eq!(back[0].data, "x\ny");
    assert_eq!(back[0].event.as_deref(), Some("e"));
    assert_eq!(encode_comment("ping", LineEnding::CrLf), ": ping\r\n");
}

#[tokio::test]
async fn sse_stream_decodes_a_body_frame_by_frame() {
    use futures_util_lite::collect;
    let body = crate::body::Body::from("data: 1\r\n\r\ndata: 2\r\n\r\n");
    let events = collect(SseStream::new(body)).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].as_ref().unwrap().data, "2");
}

mod futures_util_lite {
    use std::future::poll_fn;
    use std::pin::pin;

    pub(super) async fn collect<S: futures_core::Stream>(s: S) -> Vec<S::Item> {
        let mut s = pin!(s);
        let mut out = Vec::new();
        while let Some(item) = poll_fn(|cx| s.as_mut().poll_next(cx)).await {
            out.push(item);
        }
        out
    }
}

// === JSON array ===

fn elements(chunks: &[&[u8]]) -> Result<Vec<String>, SseError> {
    let mut d = JsonArrayDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        while let Some(e) = d.next_element()? {
            out.push(String::from_utf8(e.to_vec()).unwrap());
        }
    }
    d.finish();
    while let Some(e) = d.next_element()? {
        out.push(String::from_utf8(e.to_vec()).unwrap());
    }
    Ok(out)
}

#[test]
fn json_array_elements_are_yielded_as_they_complete() {
    let els = elements(&[
        b"[{\"a\":\"}{\\\"\"}",
        b",\r\n{\"b\":[1,{\"c\":2}]}",
        b"\r\n]",
    ])
    .unwrap();
    assert_eq!(els, [r#"{"a":"}{\""}"#, r#"{"b":[1,{"c":2}]}"#]);
    let mut d = JsonArrayDecoder::new();
    d.push(Bytes::from_static(b"[{\"a\":1}"));
    assert!(
        d.next_element().unwrap().is_some(),
        "no need to wait for the comma"
    );
}

#[test]
fn json_array_rejects_bad_framing() {
    assert!(elements(&[b"{\"a\":1}"]).is_err());
    assert!(elements(&[b"[1]"]).is_err());
    assert!(elements(&[b"[{\"a\":1}]x"]).is_err());
    assert!(elements(&[b"[{\"a\":1"]).is_err());
    let mut d = JsonArrayDecoder::new().max_element_bytes(8);
    d.push(Bytes::from_static(b"[{\"aaaaaaaaaaaaa\":1}]"));
    assert!(matches!(d.next_element(), Err(SseError::TooLarge { .. })));
}

#[test]
fn json_array_encoder_matches_gemini() {
    let mut e = JsonArrayEncoder::new();
    let mut out = Vec::new();
    out.extend_from_slice(&e.element(b"{\"a\":1}"));
    out.extend_from_slice(&e.element(b"{\"b\":2}"));
    out.extend_from_slice(&e.close());
    assert_eq!(out, b"[{\"a\":1},\r\n{\"b\":2}]");
    assert_eq!(JsonArrayEncoder::new().close(), "[]");
}

// === Properties ===

fn splits(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..=len, 0..8).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts {
        out.push(&input[prev..c]);
        prev = c;
    }
    out.push(&input[prev..]);
    out
}

fn event_strategy() -> impl Strategy<Value = Event> {
    (
        proptest::option::of("[a-z]{1,8}"),
        "[ -~]{0,40}(\n[ -~]{0,20}){0,2}",
        proptest::option::of("[0-9]{1,4}"),
    )
        .prop_map(|(event, data, id)| Event {
            event,
            data: Bytes::from(data),
            id,
            retry: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_of_an_encoded_stream_decodes_the_same(
        events in proptest::collection::vec(event_strategy(), 1..6),
        crlf in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let le = if crlf { LineEnding::CrLf } else { LineEnding::Lf };
        let mut input = Vec::new();
        for e in &events {
            input.extend_from_slice(&encode(e, le));
        }
        let whole = decode_all(&[&input]);
        // Cuts derived from the seed, anywhere in the input.
        let mut cuts: Vec<usize> = (0..6).map(|i| ((seed >> (i * 10)) as usize) % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let parts = decode_all(&split_at(&input, &cuts));
        prop_assert_eq!(&whole, &parts);
        prop_assert_eq!(whole.len(), events.len());
        for (a, b) in whole.iter().zip(&events) {
            prop_assert_eq!(&a.data, &b.data);
            prop_assert_eq!(&a.event, &b.event);
        }
        // The raw bytes of the events, however the input was cut, are the input.
        let split = split_at(&input, &cuts);
        let raw: Vec<u8> = decode_raw(&split, false)
            .into_iter()
            .flat_map(|(_, r)| r.map(|r| r.to_vec()).unwrap_or_default())
            .collect();
        prop_assert_eq!(raw, input);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in splits(2048),
    ) {
        let cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        let mut d = Decoder::new().max_event_bytes(256);
        for part in split_at(&input, &cuts) {
            d.push(Bytes::copy_from_slice(part));
            loop {
                match d.next_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => { d = Decoder::new().max_event_bytes(256); break; }
                }
                prop_assert!(d.buffered() <= 256 + 2048);
            }
            prop_assert!(d.buffered() <= 256 + part.len() + 1);
        }
        d.finish();
        while let Ok(Some(_)) = d.next_event() {}
        let mut j = JsonArrayDecoder::new().max_element_bytes(256);
        for part in split_at(&input, &cuts) {
            j.push(Bytes::copy_from_slice(part));
            while let Ok(Some(_)) = j.next_element() {}
        }
        j.finish();
        while let Ok(Some(_)) = j.next_element() {}
    }

    #[test]
    fn json_array_any_split_yields_the_elements(
        values in proptest::collection::vec(
            proptest::collection::btree_map("[a-z{}\\[\\]\"\\\\ ,]{1,6}", "[ -~]{0,12}", 0..4), 1..5),
        seed in any::<u64>(),
    ) {
        let mut enc = JsonArrayEncoder::new();
        let mut input = Vec::new();
        let jsons: Vec<serde_json::Value> = values.iter().map(|m| serde_json::to_value(m).unwrap()).collect();
        for v in &jsons {
            input.extend_from_slice(&enc.element(serde_json::to_string(v).unwrap().as_bytes()));
        }
        input.extend_from_slice(&enc.close());
        let mut cuts: Vec<usize> = (0..6).map(|i| ((seed >> (i * 10)) as usize) % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let got = elements(&split_at(&input, &cuts)).unwrap();
        let parsed: Vec<serde_json::Value> = got.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
        prop_assert_eq!(parsed, jsons);
    }
}

/// Decodes `chunks` keeping raw bytes: each event's data and the bytes it came in.
fn decode_raw(chunks: &[&[u8]], finish: bool) -> Vec<(Bytes, Option<Bytes>)> {
    let mut d = Decoder::new().keep_raw();
    let mut out = Vec::new();
    let mut drain = |d: &mut Decoder| {
        while let Some(e) = d.next_event().unwrap() {
            out.push((e.data, d.take_raw().map(|r| r.bytes())));
        }
    };
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        drain(&mut d);
    }
    if finish {
        d.finish();
        drain(&mut d);
    }
    out
}

#[test]
fn raw_bytes_are_each_event_as_it_came_across_frames() {
    let got = decode_raw(
        &[
            b"data: a\r\n",
            b"\r\ndata: b\n",
            b"data: c\n\n: ping\n\ndata: d\r\n\r\n",
        ],
        false,
    );
    let raw: Vec<_> = got.iter().map(|(_, r)| r.clone().unwrap()).collect();
    assert_eq!(
        raw,
        ["data: a\r\n\r\n", "data: b\ndata: c\n\n", "data: d\r\n\r\n"]
    );
    assert_eq!(got[1].0, "b\nc");
}

#[test]
fn an_event_ended_by_the_end_of_input_has_no_raw_bytes() {
    let got = decode_raw(&[b"data: a\n\ndata: b\n"], true);
    assert_eq!(got[0].1.as_deref(), Some(&b"data: a\n\n"[..]));
    assert_eq!(got[1].0, "b");
    assert_eq!(got[1].1, None);
}

#[test]
fn events_of_one_buffer_join_without_a_copy() {
    let mut d = Decoder::new().keep_raw();
    let input = Bytes::from_static(b"data: a\n\ndata: b\n\n");
    d.push(input.clone());
    d.next_event().unwrap().unwrap();
    let mut run = d.take_raw().unwrap();
    d.next_event().unwrap().unwrap();
    assert!(run.join(&d.take_raw().unwrap()));
    let joined = run.bytes();
    assert_eq!(joined, input);
    assert_eq!(joined.as_ptr(), input.as_ptr());
}

const _: () = assert!(
    DEFAULT_MAX_EVENT_BYTES >= 64 * 1024 * 1024,
    "room for a 4K image"
);

#[test]
fn an_event_as_large_as_the_cap_passes_and_one_byte_more_is_refused() {
    let data = "a".repeat(1000);
    let event = format!("data: {data}\n\n"); // 1008 bytes
    let mut d = Decoder::new().max_event_bytes(event.len());
    d.push(Bytes::from(event.clone()));
    assert_eq!(d.next_event().unwrap().unwrap().data, data);
    let mut d = Decoder::new().max_event_bytes(event.len() - 1);
    d.push(Bytes::from(event));
    assert!(matches!(
        d.next_event(),
        Err(SseError::TooLarge { limit: 1007 })
    ));
    assert_eq!(d.buffered(), 0);
}

/// An event of several MiB arriving in 16 KiB frames (an image model's answer), as one line.
fn big_event(len: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| b'A' + (i % 26) as u8).collect();
    let mut wire = b"data: ".to_vec();
    wire.extend_from_slice(&data);
    wire.extend_from_slice(b"\r\n\r\ndata: next\r\n\r\n");
    (data, wire)
}

#[test]
fn a_long_line_over_many_frames_is_gathered_whole_within_the_cap() {
    let (data, wire) = big_event(8 << 20);
    let max = 9 << 20;
    let mut d = Decoder::new().max_event_bytes(max).keep_raw();
    let mut events = Vec::new();
    for frame in wire.chunks(16 * 1024) {
        d.push(Bytes::copy_from_slice(frame));
        while let Some(e) = d.next_event().unwrap() {
            events.push((e.data, d.take_raw().map(|r| r.bytes())));
        }
        assert!(d.buffered() <= max, "{}", d.buffered());
    }
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, data);
    let raw = events[0].1.as_ref().unwrap();
    assert_eq!(raw.len(), data.len() + 10);
    assert!(raw.starts_with(b"data: ABC") && raw.ends_with(b"\r\n\r\n"));
    assert_eq!(events[1].0, "next");
}

#[test]
fn a_long_line_over_the_cap_is_refused_before_it_is_whole() {
    let (_, wire) = big_event(4 << 20);
    let mut d = Decoder::new().max_event_bytes(1 << 20);
    let mut fed = 0;
    let err = wire.chunks(16 * 1024).find_map(|frame| {
        fed += frame.len();
        d.push(Bytes::copy_from_slice(frame));
        d.next_event().err()
    });
    assert!(matches!(err, Some(SseError::TooLarge { limit })  if limit == 1 << 20));
    assert!(
        fed <= (1 << 20) + 16 * 1024,
        "refused as soon as it passed the cap"
    );
    assert_eq!(d.buffered(), 0);
}

#[test]
fn a_json_array_element_of_several_mib_is_read_across_frames() {
    let image = "QUJD".repeat(1 << 20); // 4 MiB of base64
    let element = format!(r#"{{"inlineData":{{"data":"{image}","note":"a \"quote\" ]"}}}}"#);
    let wire = format!("[{element},\r\n{{\"a\":1}}]");
    let mut d = JsonArrayDecoder::new().max_element_bytes(5 << 20);
    let mut got = Vec::new();
    for frame in wire.as_bytes().chunks(16 * 1024) {
        d.push(Bytes::copy_from_slice(frame));
        while let Some(e) = d.next_element().unwrap() {
            got.push(e);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], element.as_bytes());
    assert!(d.is_closed());
    let mut small = JsonArrayDecoder::new().max_element_bytes(1 << 20);
    small.push(Bytes::from(wire));
    assert!(matches!(
        small.next_element(),
        Err(SseError::TooLarge { .. })
    ));
}

#[test]
fn refusals_tell_the_client_why_without_upstream_text() {
    let msg = SseError::TooLarge { limit: 4096 }.client_message();
    assert!(
        msg.contains("4096 bytes") && msg.contains("not retried"),
        "{msg}"
    );
    let body = SseError::Body("api_key:AIzaSECRET reset".into()).client_message();
    assert!(!body.contains("AIza"), "{body}");
}
