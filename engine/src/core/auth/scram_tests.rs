//! The SCRAM state machine against RFC 7677 §3's test vector, and its failure paths.

use super::*;
use crate::core::auth::users::Credential;

// RFC 7677 §3.
const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn method() -> ScramSha256 {
    let mut db = UserDb::default();
    let salt = B64.decode(SALT_B64).unwrap();
    db.insert("user", Credential::derive(b"pencil", &salt, 4096));
    ScramSha256::new(Arc::new(db.with_secret(&[7; 32])))
}

fn start(m: &ScramSha256, first: &str) -> (Box<dyn AuthSession>, AuthStep) {
    m.start_with_nonce(Some(first.as_bytes()), SERVER_NONCE)
}

fn cont(s: &str) -> AuthStep {
    AuthStep::Continue(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn server_follows_rfc7677_test_vector() {
    let m = method();
    let (mut session, step) = start(&m, CLIENT_FIRST);
    assert_eq!(step, cont(SERVER_FIRST));
    let step = session.step(Some(CLIENT_FINAL.as_bytes()));
    let want = Some(Bytes::from_static(SERVER_FINAL.as_bytes()));
    assert_eq!(step, AuthStep::Success { user: "user".into(), data: want });
    // A finished session accepts nothing more.
    assert_eq!(session.step(Some(CLIENT_FINAL.as_bytes())), AuthStep::Fail(ReasonCode(0x87)));
}

#[test]
fn client_follows_rfc7677_test_vector() {
    let mut c = ScramClient::new("user", "pencil", CLIENT_NONCE);
    assert_eq!(c.client_first(), CLIENT_FIRST.as_bytes());
    assert_eq!(c.client_final(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
    c.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
    let forged = "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(c.verify_server_final(forged.as_bytes()).unwrap_err(), "wrong server signature");
    let mut c = ScramClient::new("user", "pencil", CLIENT_NONCE);
    let replayed = "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    assert!(c.client_final(replayed.as_bytes()).is_err(), "the server must add to the nonce");
}

#[test]
fn wrong_password_fails_at_the_proof_with_0x86() {
    let m = method();
    let mut c = ScramClient::new("user", "pencil!", CLIENT_NONCE);
    let (mut session, step) = start(&m, std::str::from_utf8(&c.client_first()).unwrap());
    let AuthStep::Continue(first) = step else { panic!("{step:?}") };
    let fin = c.client_final(&first).unwrap();
    assert_eq!(session.step(Some(&fin)), AuthStep::Fail(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
}

#[test]
fn unknown_user_looks_like_a_wrong_password() {
    let m = method();
    let first = "n,,n=nobody,r=abc";
    let (mut s1, step1) = start(&m, first);
    let (_, step2) = start(&m, first);
    assert_eq!(step1, step2, "the made-up salt is stable, so it does not give the user away");
    let AuthStep::Continue(server_first) = step1 else { panic!("{step1:?}") };
    assert!(std::str::from_utf8(&server_first).unwrap().ends_with(",i=4096"));
    let mut c = ScramClient::new("nobody", "x", "abc");
    let fin = c.client_final(&server_first).unwrap();
    assert_eq!(s1.step(Some(&fin)), AuthStep::Fail(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
}

#[test]
fn unknown_users_salt_survives_a_restart_and_shows_the_typical_count() {
    // Two loads of the same file with the same secret file: two broker starts.
    let line = |name: &str, i| UserDb::line(name, &Credential::derive(b"pw", b"salt", i));
    let text = [line("a", 4096), line("b", 10_000), line("c", 10_000)].join("\n");
    let load = || ScramSha256::new(Arc::new(UserDb::parse(&text).unwrap().with_secret(&[8; 32])));
    let first = "n,,n=nobody,r=abc";
    let (_, one) = load().start_with_nonce(Some(first.as_bytes()), SERVER_NONCE);
    let (_, two) = load().start_with_nonce(Some(first.as_bytes()), SERVER_NONCE);
    assert_eq!(one, two, "the same made-up salt after a restart, like a real user's");
    let AuthStep::Continue(server_first) = one else { panic!("{one:?}") };
    assert!(std::str::from_utf8(&server_first).unwrap().ends_with(",i=10000"), "the usual count");
    // Without the secret file, the key comes from the file's credentials: stable too.
    let load = || ScramSha256::new(Arc::new(UserDb::parse(&text).unwrap()));
    let (_, one) = load().start_with_nonce(Some(first.as_bytes()), SERVER_NONCE);
    let (_, two) = load().start_with_nonce(Some(first.as_bytes()), SERVER_NONCE);
    assert_eq!(one, two);
}

#[test]
fn nonce_and_channel_binding_mismatches_fail_with_0x87() {
    let m = method();
    let wrong_nonce = CLIENT_FINAL.replace("hNlF$k0", "hNlF$k1");
    let wrong_cbind = CLIENT_FINAL.replace("c=biws", "c=eSws");
    let no_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    for fin in [wrong_nonce.as_str(), wrong_cbind.as_str(), no_proof, "garbage"] {
        let (mut session, _) = start(&m, CLIENT_FIRST);
        assert_eq!(session.step(Some(fin.as_bytes())), AuthStep::Fail(ReasonCode(0x87)), "{fin}");
    }
    let (mut session, _) = start(&m, CLIENT_FIRST);
    assert_eq!(session.step(None), AuthStep::Fail(ReasonCode(0x87)), "no data");
}

#[test]
fn malformed_client_first_fails_with_0x87() {
    let m = method();
    for first in [
        "",
        "n=user,r=abc",
        "p=tls-unique,,n=user,r=abc",
        "n,,m=ext,n=user,r=abc",
        "n,,n=,r=abc",
        "n,,n=us=er,r=abc",
        "n,,n=user,r=",
        "n,,n=user,r=a b",
        "n,a=other,n=user,r=abc",
    ] {
        let (_, step) = start(&m, first);
        assert_eq!(step, AuthStep::Fail(ReasonCode::NOT_AUTHORIZED), "{first:?}");
    }
    let (_, step) = m.start_with_nonce(None, SERVER_NONCE);
    assert_eq!(step, AuthStep::Fail(ReasonCode::NOT_AUTHORIZED));
    let (_, step) = start(&m, "y,a=user,n=user,r=abc");
    assert!(matches!(step, AuthStep::Continue(_)), "authzid equal to the user is fine");
}

#[test]
fn saslnames_escape_commas_and_equals() {
    assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
    assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
    assert_eq!(decode_saslname("a=2"), None);
    let mut db = UserDb::default();
    db.insert("a,b", Credential::derive(b"pw", b"salt", 4096));
    let m = ScramSha256::new(Arc::new(db));
    let mut c = ScramClient::new("a,b", "pw", "n1");
    let (mut session, step) = m.start(Some(&c.client_first()), &mut AuthRng::new([1; 32], 0));
    let AuthStep::Continue(first) = step else { panic!("{step:?}") };
    let fin = c.client_final(&first).unwrap();
    let AuthStep::Success { user, data } = session.step(Some(&fin)) else { panic!() };
    assert_eq!(user, "a,b");
    c.verify_server_final(&data.unwrap()).unwrap();
}

#[test]
fn server_nonces_differ_per_exchange_and_per_shard() {
    let m = method();
    let mut nonces = Vec::new();
    for shard in 0..2 {
        let mut rng = AuthRng::new([3; 32], shard);
        for _ in 0..2 {
            let (_, step) = m.start(Some(CLIENT_FIRST.as_bytes()), &mut rng);
            let AuthStep::Continue(first) = step else { panic!("{step:?}") };
            nonces.push(first);
        }
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 4);
}
