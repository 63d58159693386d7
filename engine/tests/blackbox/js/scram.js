'use strict';
// The client side of SCRAM-SHA-256 (RFC 5802 §3, RFC 7677), no channel binding ("n,,"),
// on node:crypto only. Written for the black-box tests, independent of the broker's Rust code
// and of test_14's Python client.

const crypto = require('node:crypto');

const hmac = (key, msg) => crypto.createHmac('sha256', key).update(msg).digest();
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();

// RFC 5802 §5.1: "=" and "," in a user name are sent as "=3D" and "=2C".
const saslName = (user) => user.replace(/=/g, '=3D').replace(/,/g, '=2C');

function parseAttributes(text) {
  const attrs = {};
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq !== 1) throw new Error(`malformed SCRAM attribute ${JSON.stringify(part)}`);
    attrs[part[0]] = part.slice(2);
  }
  return attrs;
}

class ScramClient {
  constructor(user, password, nonce = crypto.randomBytes(18).toString('base64')) {
    this.password = password;
    this.nonce = nonce;
    this.firstBare = `n=${saslName(user)},r=${nonce}`;
    this.serverSignature = null;
    this.tamperNonce = false; // tests: send a final message whose nonce the server never issued
  }

  /** client-first-message, for CONNECT's (or AUTH 0x19's) Authentication Data. */
  clientFirst() {
    return Buffer.from(`n,,${this.firstBare}`);
  }

  /** client-final-message for the server-first-message (AUTH 0x18's data). */
  clientFinal(serverFirstBuf) {
    const serverFirst = Buffer.from(serverFirstBuf).toString('utf8');
    const attrs = parseAttributes(serverFirst);
    if (!attrs.r || !attrs.r.startsWith(this.nonce) || attrs.r.length <= this.nonce.length) {
      throw new Error(`server nonce ${attrs.r} does not extend ours (${this.nonce})`);
    }
    const iterations = Number.parseInt(attrs.i, 10);
    if (!(iterations >= 1) || !attrs.s) throw new Error(`bad server-first ${serverFirst}`);
    const salted = crypto.pbkdf2Sync(this.password, Buffer.from(attrs.s, 'base64'),
      iterations, 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const nonce = this.tamperNonce ? `${attrs.r}X` : attrs.r;
    const withoutProof = `c=biws,r=${nonce}`; // biws = base64("n,,")
    const authMessage = `${this.firstBare},${serverFirst},${withoutProof}`;
    const clientSignature = hmac(sha256(clientKey), authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i] ^ clientSignature[i];
    this.serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
  }

  /** Checks the server-final-message ("v=" + the server signature); throws if it is wrong. */
  verifyServerFinal(serverFinalBuf) {
    const text = Buffer.from(serverFinalBuf || []).toString('utf8');
    if (!this.serverSignature) throw new Error('server-final before client-final');
    if (!text.startsWith('v=')) throw new Error(`server-final is not v=...: ${text}`);
    const got = Buffer.from(text.slice(2), 'base64');
    if (got.length !== this.serverSignature.length ||
        !crypto.timingSafeEqual(got, this.serverSignature)) {
      throw new Error('the server signature does not verify');
    }
    return true;
  }
}

module.exports = { ScramClient, parseAttributes };
