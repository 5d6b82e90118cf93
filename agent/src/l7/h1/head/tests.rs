use super::*;

fn request(text: &str) -> Result<Option<RequestHead>, HeadError> {
    RequestHead::parse(&mut BytesMut::from(text))
}

fn framing(text: &str) -> Result<Framing, HeadError> {
    request(text)?.expect("complete head").framing()
}

#[test]
fn a_complete_head_is_taken_off_the_buffer_and_the_rest_stays() {
    let mut buf =
        BytesMut::from("GET /a?b HTTP/1.1\r\nHost: x:80\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
    let head = RequestHead::parse(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..], b"GET /next");
    assert_eq!(head.method(), "GET");
    assert_eq!(head.target(), "/a?b");
    assert_eq!(head.host(), "x:80");
    assert_eq!(head.values("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
    assert!(head.keep_alive());
    assert_eq!(head.framing(), Ok(Framing::None));
    assert!(matches!(request("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
}

#[test]
fn framings_a_pod_could_read_differently_are_refused() {
    let cases = [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            HeadError::LengthAndCoding,
        ),
        (
            "Content-Length: 5\r\nContent-Length: 6",
            HeadError::BadLength,
        ),
        ("Content-Length: 5, 6", HeadError::BadLength),
        ("Content-Length: +5", HeadError::BadLength),
        ("Content-Length: 0x5", HeadError::BadLength),
        (
            "Transfer-Encoding: gzip, chunked",
            HeadError::UnsupportedCoding,
        ),
        (
            "Transfer-Encoding: chunked, gzip",
            HeadError::UnsupportedCoding,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            HeadError::UnsupportedCoding,
        ),
        ("Transfer-Encoding: xchunked", HeadError::UnsupportedCoding),
    ];
    for (fields, want) in cases {
        let text = format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n");
        assert_eq!(framing(&text), Err(want.clone()), "{fields}");
        assert_eq!(
            want.status(),
            if want == HeadError::UnsupportedCoding {
                501
            } else {
                400
            }
        );
    }
    for bad in [
        "GET / HTTP/1.1\nHost: x\n\n",
        "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
    ] {
        assert!(request(bad).is_err(), "{bad:?} was read");
    }
    let te10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(framing(te10).is_err());
}

#[test]
fn bodies_are_framed_as_rfc_9112_says() {
    let post = |fields: &str| framing(&format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n"));
    assert_eq!(post("Content-Length: 12"), Ok(Framing::Length(12)));
    assert_eq!(post("Content-Length: 12, 12"), Ok(Framing::Length(12)));
    assert_eq!(post("Content-Length: 0"), Ok(Framing::None));
    assert_eq!(post("Transfer-Encoding: Chunked"), Ok(Framing::Chunked));
    assert_eq!(post("X: y"), Ok(Framing::None));

    let response = |text: &str, to_head| {
        ResponseHead::parse(&mut BytesMut::from(text))
            .unwrap()
            .unwrap()
            .framing(to_head)
    };
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(response(ok, false), Ok(Framing::Length(3)));
    assert_eq!(response(ok, true), Ok(Framing::None));
    assert_eq!(
        response("HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok(Framing::None)
    );
    assert_eq!(
        response(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        ),
        Ok(Framing::None)
    );
    assert_eq!(
        response("HTTP/1.1 200 OK\r\n\r\n", false),
        Ok(Framing::UntilClose)
    );
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(response(chunked, false), Ok(Framing::Chunked));
}

#[test]
fn a_rewritten_head_keeps_every_field_but_those_dropped() {
    let head = request(
        "GET /a/../b HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\nX-Y: z\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    let out = head.rewritten("/b", &["upgrade", "http2-settings"]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /b HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\n"
    );
    let parts = head.to_parts().unwrap();
    assert_eq!(parts.headers["x-y"], "z");
    assert_eq!(
        String::from_utf8(head_from_parts(&parts, "/b", 1))
            .unwrap()
            .lines()
            .next(),
        Some("GET /b HTTP/1.1")
    );
}

#[test]
fn oversized_heads_are_refused_once_past_the_limit() {
    let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    while text.len() <= MAX_HEAD {
        text.push_str(
            "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    assert_eq!(request(&text).err(), Some(HeadError::TooManyHeaders));
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(request(&long).err(), Some(HeadError::TooLarge));
}
