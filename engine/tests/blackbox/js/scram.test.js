'use strict';
// The SCRAM client against RFC 7677 §3's example exchange (user "user", password "pencil"),
// so a failure in test_15 can be told apart from a bug in this client. Run: node --test
// (test_15_mqttjs_auth.py runs it).

const test = require('node:test');
const assert = require('node:assert');
const { ScramClient, parseAttributes } = require('./scram');

const CLIENT_NONCE = 'rOprNGfwEbeRWgbNEkqO';
const SERVER_FIRST = 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,'
  + 's=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
const CLIENT_FINAL = 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,'
  + 'p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
const SERVER_FINAL = 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=';

test('RFC 7677 example exchange', () => {
  const scram = new ScramClient('user', 'pencil', CLIENT_NONCE);
  assert.strictEqual(scram.clientFirst().toString(), `n,,n=user,r=${CLIENT_NONCE}`);
  assert.strictEqual(scram.clientFinal(Buffer.from(SERVER_FIRST)).toString(), CLIENT_FINAL);
  assert.strictEqual(scram.verifyServerFinal(Buffer.from(SERVER_FINAL)), true);
});

test('a wrong server signature is rejected', () => {
  const scram = new ScramClient('user', 'pencil', CLIENT_NONCE);
  scram.clientFinal(Buffer.from(SERVER_FIRST));
  const forged = `v=${Buffer.alloc(32, 7).toString('base64')}`;
  assert.throws(() => scram.verifyServerFinal(Buffer.from(forged)), /does not verify/);
  assert.throws(() => scram.verifyServerFinal(Buffer.from('e=other-error')), /not v=/);
});

test('a server nonce that does not extend ours is rejected', () => {
  const scram = new ScramClient('user', 'pencil', CLIENT_NONCE);
  assert.throws(() => scram.clientFinal(Buffer.from('r=someoneelse,s=AAAA,i=4096')), /nonce/);
  assert.throws(() => scram.clientFinal(Buffer.from(`r=${CLIENT_NONCE},s=AAAA,i=4096`)), /nonce/);
});

test('user names escape "=" and ","', () => {
  const scram = new ScramClient('a=b,c', 'x', 'n0nce');
  assert.strictEqual(scram.clientFirst().toString(), 'n,,n=a=3Db=2Cc,r=n0nce');
  assert.deepStrictEqual(parseAttributes('r=ab=c,s=QQ==,i=1'), { r: 'ab=c', s: 'QQ==', i: '1' });
});
