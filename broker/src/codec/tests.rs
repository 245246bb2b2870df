use super::*;

const BOTH: [Version; 2] = [Version::V311, Version::V5];

fn roundtrip(p: &Packet, v: Version) -> Packet {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf).unwrap();
    let total = frame_len(&buf, usize::MAX)
        .unwrap()
        .expect("complete frame");
    assert_eq!(total, buf.len(), "frame length of {}", p.name());
    decode(buf.freeze(), v).unwrap_or_else(|e| panic!("{} ({v}): {e}", p.name()))
}

fn decode_raw(bytes: &[u8], v: Version) -> Result<Packet> {
    match frame_len(bytes, usize::MAX)? {
        Some(n) if n == bytes.len() => decode(Bytes::copy_from_slice(bytes), v),
        Some(_) => panic!("test frame has trailing bytes"),
        None => Err(Error::Malformed("incomplete")),
    }
}

fn full_props() -> Properties {
    PropertySet {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        ..Default::default()
    }
    .into()
}

#[test]
fn connect_roundtrip_both_versions() {
    for v in BOTH {
        let mut props = Properties::default();
        let mut will_props = Properties::default();
        if v == Version::V5 {
            props.session_expiry_interval = Some(300);
            props.receive_maximum = Some(10);
            props.maximum_packet_size = Some(4096);
            props.topic_alias_maximum = Some(5);
            props.request_response_information = Some(1);
            props.user_properties = vec![("a".into(), "b".into())];
            will_props = full_props();
            will_props.will_delay_interval = Some(5);
        }
        let c = Packet::Connect(Box::new(Connect {
            version: v,
            clean_start: true,
            keep_alive: 30,
            client_id: "dev-1".into(),
            will: Some(Will {
                topic: "will/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: will_props,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: props,
        }));
        assert_eq!(roundtrip(&c, v), c);
    }
}

#[test]
fn every_other_packet_roundtrips() {
    for v in BOTH {
        let props = |p: Properties| {
            if v == Version::V5 {
                p
            } else {
                Properties::default()
            }
        };
        let reason_props = props(
            PropertySet {
                reason_string: Some("why".into()),
                ..Default::default()
            }
            .into(),
        );
        let mut packets = vec![
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::Success,
                properties: props(
                    PropertySet {
                        assigned_client_identifier: Some("auto-1".into()),
                        server_keep_alive: Some(20),
                        receive_maximum: Some(100),
                        topic_alias_maximum: Some(10),
                        maximum_qos: Some(1),
                        retain_available: Some(1),
                        maximum_packet_size: Some(1 << 20),
                        wildcard_subscription_available: Some(1),
                        subscription_identifier_available: Some(1),
                        shared_subscription_available: Some(1),
                        response_information: Some("resp/".into()),
                        ..Default::default()
                    }
                    .into(),
                ),
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: "a/b".into(),
                pid: 0,
                properties: props(full_props()),
                payload: Bytes::from_static(b"hello"),
            }),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "a/b".into(),
                pid: 7,
                properties: props(
                    PropertySet {
                        subscription_identifiers: vec![1, 300],
                        topic_alias: Some(3),
                        ..Default::default()
                    }
                    .into(),
                ),
                payload: Bytes::new(),
            }),
            Packet::Subscribe(Subscribe {
                pid: 9,
                filters: vec![
                    (
                        "a/+".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    ),
                    (
                        "$share/g/x/#".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: v == Version::V5,
                            retain_as_published: v == Version::V5,
                            retain_handling: if v == Version::V5 {
                                RetainHandling::Never
                            } else {
                                RetainHandling::SendAlways
                            },
                        },
                    ),
                ],
                properties: props(
                    PropertySet {
                        subscription_identifiers: vec![42],
                        ..Default::default()
                    }
                    .into(),
                ),
            }),
            Packet::SubAck(SubAck {
                pid: 9,
                codes: vec![
                    ReasonCode::GRANTED_QOS0,
                    ReasonCode::GrantedQos1,
                    ReasonCode::GrantedQos2,
                    ReasonCode::UnspecifiedError,
                ],
                properties: reason_props.clone(),
            }),
            Packet::Unsubscribe(Unsubscribe {
                pid: 10,
                filters: vec!["a/+".into(), "b".into()],
                properties: props(
                    PropertySet {
                        user_properties: vec![("x".into(), "y".into())],
                        ..Default::default()
                    }
                    .into(),
                ),
            }),
            Packet::UnsubAck(UnsubAck {
                pid: 10,
                codes: if v == Version::V5 {
                    vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
                } else {
                    vec![]
                },
                properties: reason_props.clone(),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
        ];
        for kind in [
            AckKind::PubAck,
            AckKind::PubRec,
            AckKind::PubRel,
            AckKind::PubComp,
        ] {
            packets.push(Packet::Ack(Ack::new(kind, 77)));
            if v == Version::V5 {
                let code = if matches!(kind, AckKind::PubRel | AckKind::PubComp) {
                    ReasonCode::PacketIdentifierNotFound
                } else {
                    ReasonCode::NotAuthorized
                };
                packets.push(Packet::Ack(Ack {
                    kind,
                    pid: 78,
                    code,
                    properties: reason_props.clone(),
                }));
            }
        }
        if v == Version::V5 {
            packets.push(Packet::Disconnect(Disconnect {
                code: ReasonCode::DisconnectWithWill,
                properties: PropertySet {
                    session_expiry_interval: Some(0),
                    ..(*reason_props).clone()
                }
                .into(),
            }));
            packets.push(Packet::Auth(Auth {
                code: ReasonCode::ContinueAuthentication,
                properties: PropertySet {
                    authentication_method: Some("SCRAM".into()),
                    authentication_data: Some(Bytes::from_static(b"x")),
                    ..Default::default()
                }
                .into(),
            }));
        }
        for p in packets {
            assert_eq!(roundtrip(&p, v), p, "{} ({v})", p.name());
        }
    }
}

#[test]
fn large_publish_uses_multibyte_length() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "big".into(),
        pid: 1,
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; 200_000]),
    });
    for v in BOTH {
        assert_eq!(roundtrip(&p, v), p);
    }
}

#[test]
fn frame_len_handles_partial_and_bad_lengths() {
    assert_eq!(frame_len(&[0x30], 100).unwrap(), None);
    assert_eq!(frame_len(&[0x30, 0x80], 100).unwrap(), None);
    assert_eq!(frame_len(&[0x30, 3, 0, 1], 100).unwrap(), None);
    assert_eq!(frame_len(&[0xC0, 0], 100).unwrap(), Some(2));
    assert!(matches!(
        frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        frame_len(&[0x30, 0xFF, 0x7F], 100),
        Err(Error::TooLarge { .. })
    ));
}

/// Every truncation of every valid packet is an error, never a panic.
#[test]
fn truncated_packets_are_errors() {
    let mut buf = BytesMut::new();
    Packet::Connect(Box::new(Connect {
        version: Version::V5,
        clean_start: false,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: full_props(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: PropertySet {
            session_expiry_interval: Some(1),
            ..Default::default()
        }
        .into(),
    }))
    .encode(Version::V5, &mut buf)
    .unwrap();
    let full = buf.to_vec();
    for cut in 2..full.len() {
        let mut bad = full[..cut].to_vec();
        bad[1] = (cut - 2) as u8; // claim exactly what is there
        assert!(decode_raw(&bad, Version::V5).is_err(), "cut at {cut}");
    }
}

#[test]
fn malformed_inputs_are_rejected() {
    let v5 = Version::V5;
    let v4 = Version::V311;
    // Reserved flag bits in fixed headers.
    assert!(decode_raw(&[0xC1, 0], v4).is_err(), "PINGREQ flags");
    assert!(
        decode_raw(&[0x60, 2, 0, 1], v4).is_err(),
        "PUBREL must have flags 0010"
    );
    assert!(
        decode_raw(&[0x80, 6, 0, 1, 0, 1, b'a', 0], v4).is_err(),
        "SUBSCRIBE must have flags 0010"
    );
    assert!(decode_raw(&[0x00, 0], v4).is_err(), "type 0");
    // QoS 3 publish, DUP on QoS 0.
    assert!(decode_raw(&[0x36, 5, 0, 1, b'a', 0, 1], v4).is_err());
    assert!(decode_raw(&[0x38, 3, 0, 1, b'a'], v4).is_err());
    // Wildcard in a topic name; empty name on 3.1.1.
    assert!(matches!(
        decode_raw(&[0x30, 3, 0, 1, b'+'], v4),
        Err(Error::TopicName(_))
    ));
    assert!(decode_raw(&[0x30, 2, 0, 0], v4).is_err());
    // Bad UTF-8, U+0000, and an encoded surrogate (ED A0 80) in a topic.
    assert!(decode_raw(&[0x30, 4, 0, 2, 0xC3, 0x28], v4).is_err());
    assert!(decode_raw(&[0x30, 4, 0, 2, b'a', 0], v4).is_err());
    assert!(decode_raw(&[0x30, 5, 0, 3, 0xED, 0xA0, 0x80], v4).is_err());
    // Packet identifier 0.
    assert!(decode_raw(&[0x40, 2, 0, 0], v4).is_err());
    assert!(decode_raw(&[0x32, 5, 0, 1, b'a', 0, 0], v4).is_err());
    // SUBSCRIBE: reserved option bits, no filters, retain handling 3.
    assert!(decode_raw(&[0x82, 6, 0, 1, 0, 1, b'a', 0x04], v4).is_err());
    assert!(decode_raw(&[0x82, 2, 0, 1], v4).is_err());
    assert!(decode_raw(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], v5).is_err());
    // CONNECT: reserved flag, bad protocol name, unsupported level, will flags without will.
    let connect = |name: &[u8], level: u8, flags: u8| {
        let mut b = vec![0x10, 0];
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&[level, flags, 0, 10]);
        if level == 5 {
            b.push(0);
        }
        b.extend_from_slice(&[0, 1, b'c']);
        b[1] = (b.len() - 2) as u8;
        b
    };
    assert!(decode_raw(&connect(b"MQTT", 4, 0x02), v4).is_ok());
    assert!(matches!(
        decode_raw(&connect(b"MQTT", 4, 0x03), v4),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        decode_raw(&connect(b"MQTX", 4, 0x02), v4),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        decode_raw(&connect(b"MQTT", 6, 0x02), v4),
        Err(Error::UnsupportedVersion(6))
    ));
    assert!(matches!(
        decode_raw(&connect(b"MQIsdp", 3, 0x02), v4),
        Err(Error::UnsupportedVersion(3))
    ));
    assert!(
        decode_raw(&connect(b"MQTT", 4, 0x22), v4).is_err(),
        "will retain without will"
    );
    assert!(
        decode_raw(&connect(b"MQTT", 4, 0x42), v4).is_err(),
        "password without username (3.1.1)"
    );
    // 5.0 properties: not allowed in this packet, duplicated, unknown, bad value, overlong.
    assert!(
        decode_raw(&[0x30, 6, 0, 1, b'a', 2, 0x11, 0], v5).is_err(),
        "session expiry in PUBLISH"
    );
    assert!(
        decode_raw(&[0x30, 8, 0, 1, b'a', 4, 0x01, 0, 0x01, 0], v5).is_err(),
        "duplicate"
    );
    assert!(
        decode_raw(&[0x30, 6, 0, 1, b'a', 2, 0x7F, 0], v5).is_err(),
        "unknown id"
    );
    assert!(
        decode_raw(&[0x30, 6, 0, 1, b'a', 2, 0x01, 2], v5).is_err(),
        "payload format 2"
    );
    assert!(
        decode_raw(&[0x30, 5, 0, 1, b'a', 9, 0x01], v5).is_err(),
        "property length too long"
    );
    assert!(
        decode_raw(&[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0], v5).is_err(),
        "topic alias 0"
    );
    // Payload format indicator 1 with a payload that is not UTF-8.
    assert!(matches!(
        decode_raw(&[0x30, 7, 0, 1, b'a', 2, 0x01, 1, 0xFF], v5),
        Err(Error::PayloadFormat)
    ));
    // Bodies where none is allowed, leftovers, and AUTH on 3.1.1.
    assert!(decode_raw(&[0xE0, 1, 0], v4).is_err());
    assert!(decode_raw(&[0x40, 3, 0, 1, 0], v4).is_err());
    assert!(decode_raw(&[0xF0, 0], v4).is_err());
    // Invalid reason code in a 5.0 PUBACK.
    assert!(decode_raw(&[0x40, 3, 0, 1, 0x05], v5).is_err());
}

/// A cheap fuzz: mutations of valid packets must never panic.
#[test]
fn random_mutations_never_panic() {
    let mut seed: u64 = 0x9E3779B97F4A7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut base = BytesMut::new();
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "x/y".into(),
        pid: 3,
        properties: full_props(),
        payload: Bytes::from_static(b"payload"),
    })
    .encode(Version::V5, &mut base)
    .unwrap();
    let base = base.to_vec();
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        for v in BOTH {
            if let Ok(Some(n)) = frame_len(&b, 1 << 20) {
                let _ = decode(Bytes::copy_from_slice(&b[..n]), v);
            }
        }
    }
}

/// Packets and queued messages are moved by value; without properties they must not
/// carry the whole property set.
#[test]
fn empty_properties_cost_one_pointer() {
    assert_eq!(
        std::mem::size_of::<Properties>(),
        std::mem::size_of::<usize>()
    );
    assert!(Properties::default().is_empty());
    let decoded = roundtrip(&Packet::Ack(Ack::new(AckKind::PubAck, 7)), Version::V5);
    let Packet::Ack(ack) = decoded else {
        panic!("not an ack: {decoded:?}")
    };
    assert!(ack.properties.is_empty() && ack.properties == Properties::default());
}

/// A delivery writes its own expiry, subscription identifiers and alias around the
/// message's properties; the result must be the PUBLISH those properties would make.
#[test]
fn per_delivery_fields_replace_the_messages_own() {
    let header = PublishHeader {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        pid: 9,
    };
    let ids = [3, 200];
    for (base, per) in [
        (full_props(), None),
        (Properties::default(), None),
        (
            full_props(),
            Some(PerDelivery {
                message_expiry_interval: Some(5),
                subscription_identifiers: &ids,
                topic_alias: Some(2),
            }),
        ),
        (
            Properties::default(),
            Some(PerDelivery {
                message_expiry_interval: None,
                subscription_identifiers: &ids[..1],
                topic_alias: None,
            }),
        ),
        (full_props(), Some(PerDelivery::default())),
    ] {
        let mut expected = base.clone();
        if let Some(per) = per {
            let set = &mut *expected;
            set.message_expiry_interval = per.message_expiry_interval;
            set.subscription_identifiers = per.subscription_identifiers.to_vec();
            set.topic_alias = per.topic_alias;
        }
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, Version::V5, header, "a/b", &base, per, b"data").unwrap();
        let Packet::Publish(p) = decode_raw(&buf, Version::V5).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.properties, expected.compact());
        assert_eq!(&p.payload[..], b"data");
        // 3.1.1 has no properties to write.
        let mut old = BytesMut::new();
        encode_publish(&mut old, Version::V311, header, "a/b", &base, per, b"data").unwrap();
        let Packet::Publish(o) = decode_raw(&old, Version::V311).unwrap() else {
            panic!("not a publish")
        };
        assert!(o.properties.is_empty() && &o.payload[..] == b"data" && &*o.topic == "a/b");
    }
}

/// `decode` checks the frame itself: nothing, a cut frame or one with bytes beyond its
/// remaining length is an error, never a panic or a misread.
#[test]
fn decode_checks_the_frame_it_is_given() {
    assert!(decode(Bytes::new(), Version::V5).is_err(), "empty");
    assert!(
        decode(Bytes::from_static(&[0xC0]), Version::V5).is_err(),
        "no length"
    );
    assert!(
        decode(Bytes::from_static(&[0x30, 0x85]), Version::V5).is_err(),
        "cut length"
    );
    let publish = [0x30, 6, 0, 1, b't', 0, b'h', b'i'];
    assert!(decode(Bytes::copy_from_slice(&publish), Version::V5).is_ok());
    for cut in 0..publish.len() {
        let short = Bytes::copy_from_slice(&publish[..cut]);
        assert!(decode(short, Version::V5).is_err(), "cut at {cut}");
    }
    let mut long = publish.to_vec();
    long.push(b'!');
    let err = decode(Bytes::from(long), Version::V5).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

/// A field longer than an MQTT string can hold is an encoding error, and nothing of
/// the packet is written: a plugin's overlong reason string cannot corrupt a CONNACK.
#[test]
fn overlong_fields_are_errors_and_leave_the_buffer_as_it_was() {
    let long = "x".repeat(70_000);
    let mut out = BytesMut::from(&b"before"[..]);
    let connack = |reason: &str| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: PropertySet {
                reason_string: Some(reason.into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }
            .into(),
        })
    };
    let e = connack(&long).encode(Version::V5, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLong {
                what: "reason string",
                len: 70_000
            }
        ),
        "{e}"
    );
    assert_eq!(&out[..], b"before");
    let topic_too_long = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long.as_str().into(),
        pid: 0,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    for v in BOTH {
        assert!(topic_too_long.encode(v, &mut out).is_err());
        assert_eq!(&out[..], b"before");
    }
    // Within a maximum: the reason string goes first, then the user properties.
    let mut within = BytesMut::new();
    connack(&long)
        .encode_within(Version::V5, usize::MAX, &mut within)
        .unwrap();
    let Packet::ConnAck(c) = decode(within.freeze(), Version::V5).unwrap() else {
        panic!("not a CONNACK")
    };
    assert_eq!(c.code, ReasonCode::NotAuthorized);
    assert_eq!(c.properties.reason_string, None);
    assert_eq!(
        c.properties.user_properties.len(),
        1,
        "kept: there was room"
    );
    for (max, reason, users) in [(100, true, 1), (12, false, 1), (5, false, 0)] {
        let mut small = BytesMut::new();
        connack("not on this listener")
            .encode_within(Version::V5, max, &mut small)
            .unwrap();
        assert!(small.len() <= max, "{} > {max}", small.len());
        let Packet::ConnAck(c) = decode(small.freeze(), Version::V5).unwrap() else {
            panic!("not a CONNACK")
        };
        assert_eq!(c.properties.reason_string.is_some(), reason, "max {max}");
        assert_eq!(c.properties.user_properties.len(), users, "max {max}");
    }
    let mut none = BytesMut::new();
    assert!(connack("x")
        .encode_within(Version::V5, 4, &mut none)
        .is_err());
    assert!(none.is_empty());
}

#[test]
fn reason_codes_a_packet_may_not_carry_are_malformed() {
    // PUBACK 0x8C (bad authentication method) and DISCONNECT 0x19 (re-authenticate).
    assert!(decode_raw(&[0x40, 3, 0, 1, 0x8C], Version::V5).is_err());
    assert!(decode_raw(&[0xE0, 1, 0x19], Version::V5).is_err());
    assert!(decode_raw(&[0xE0, 1, 0xFF], Version::V5).is_err());
    assert!(decode_raw(&[0xE0, 1, 0x8E], Version::V5).is_ok());
}

/// Found by fuzzing (fuzz/regressions/codec/): a 3.1.1 SUBACK with a 5.0-only code
/// decoded, and encoded back as 0x80.
#[test]
fn a_311_suback_carries_only_its_four_return_codes() {
    assert!(decode_raw(&[0x90, 4, 8, 248, 0x91, 0x91], Version::V311).is_err());
    assert!(
        decode_raw(&[0x90, 4, 8, 248, 0x91, 0x91], Version::V5).is_err(),
        "no properties length"
    );
    assert!(decode_raw(&[0x90, 5, 8, 248, 0, 0x91, 0x91], Version::V5).is_ok());
    assert!(decode_raw(&[0x90, 6, 8, 248, 0, 1, 2, 0x80], Version::V311).is_ok());
}

#[test]
fn a_reader_shares_a_repeated_topic_and_still_checks_every_other() {
    let publish = |topic: &str| {
        let mut buf = BytesMut::new();
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pid: 0,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        })
        .encode(Version::V5, &mut buf)
        .unwrap();
        buf.freeze()
    };
    let topic = |p: Packet| match p {
        Packet::Publish(p) => p.topic,
        other => panic!("expected PUBLISH, got {}", other.name()),
    };
    let mut last = LastTopic::default();
    let first = topic(decode_with(publish("s/1"), Version::V5, &mut last).unwrap());
    let again = topic(decode_with(publish("s/1"), Version::V5, &mut last).unwrap());
    assert!(Arc::ptr_eq(&first, &again), "the same topic is shared");
    let other = topic(decode_with(publish("s/2"), Version::V5, &mut last).unwrap());
    assert_eq!(&*other, "s/2");
    // An invalid name is refused whatever came before (the encoder does not check).
    for bad in ["s/+", "s/#", "s/1\0"] {
        assert!(
            decode_with(publish(bad), Version::V5, &mut last).is_err(),
            "{bad:?}"
        );
    }
    let back = topic(decode_with(publish("s/2"), Version::V5, &mut last).unwrap());
    assert!(Arc::ptr_eq(&other, &back), "a refused topic is not kept");
}
