import Crypto
import _CryptoExtras

/// The algorithms of security policy Basic256Sha256 (OPC UA Part 7, Part 6 §6.7.5): key
/// derivation P_SHA256, the symmetric keys of one security token, AES-256-CBC without cipher
/// padding, HMAC-SHA256, RSA-OAEP-SHA1 and RSA-PKCS#1-v1.5-SHA256.
enum UACrypto {
    static let nonceLength = 32
    static let symmetricSignatureSize = 32
    static let symmetricBlockSize = 16
    /// RSA-OAEP with SHA-1 takes 2·20 + 2 bytes of each block.
    static let oaepSHA1Overhead = 42
    static let rsaSHA256SignatureUri = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    static let rsaOAEPUri = "http://www.w3.org/2001/04/xmlenc#rsa-oaep"

    /// P_SHA256(secret, seed) (RFC 5246 §5), `length` bytes.
    static func pSHA256(secret: [UInt8], seed: [UInt8], length: Int) -> [UInt8] {
        let key = SymmetricKey(data: secret)
        var out: [UInt8] = []
        out.reserveCapacity(length + 32)
        var a = seed
        while out.count < length {
            a = Array(HMAC<SHA256>.authenticationCode(for: a, using: key))
            out += Array(HMAC<SHA256>.authenticationCode(for: a + seed, using: key))
        }
        return Array(out.prefix(length))
    }

    static func random(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    static func sha1(_ bytes: [UInt8]) -> [UInt8] { Array(Insecure.SHA1.hash(data: bytes)) }

    /// Lower-case hex.
    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func hmac(_ data: [UInt8], key: SymmetricKey) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: key))
    }

    static func aesCBC(encrypt: Bool, _ data: [UInt8], key: SymmetricKey, iv: [UInt8]) throws -> [UInt8] {
        let iv = try AES._CBC.IV(ivBytes: iv)
        if encrypt { return Array(try AES._CBC.encrypt(data, using: key, iv: iv, noPadding: true)) }
        return Array(try AES._CBC.decrypt(data, using: key, iv: iv, noPadding: true))
    }

    /// RSA-OAEP-SHA1 in blocks of (modulus − 42) bytes.
    static func rsaEncrypt(_ data: [UInt8], with key: _RSA.Encryption.PublicKey) throws -> [UInt8] {
        let keyBytes = key.keySizeInBits / 8
        let plainBlock = keyBytes - oaepSHA1Overhead
        var out: [UInt8] = []
        out.reserveCapacity((data.count + plainBlock - 1) / plainBlock * keyBytes)
        var i = 0
        while i < data.count {
            let block = data[i..<min(data.count, i + plainBlock)]
            out += Array(try key.encrypt(block, padding: .PKCS1_OAEP))
            i += plainBlock
        }
        return out
    }

    static func rsaDecrypt(_ data: ArraySlice<UInt8>, with key: _RSA.Encryption.PrivateKey) throws -> [UInt8] {
        let keyBytes = key.keySizeInBits / 8
        guard data.count % keyBytes == 0 else { throw UASecurityFault("encrypted part of \(data.count) bytes is not a whole number of \(keyBytes)-byte blocks") }
        var out: [UInt8] = []
        var i = data.startIndex
        while i < data.endIndex {
            out += Array(try key.decrypt(data[i..<(i + keyBytes)], padding: .PKCS1_OAEP))
            i += keyBytes
        }
        return out
    }

    static func rsaSign(_ data: [UInt8], with key: _RSA.Signing.PrivateKey) throws -> [UInt8] {
        Array(try key.signature(for: SHA256.hash(data: data), padding: .insecurePKCS1v1_5).rawRepresentation)
    }

    static func rsaVerify(_ signature: [UInt8], _ data: [UInt8], with key: _RSA.Signing.PublicKey) -> Bool {
        key.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: SHA256.hash(data: data), padding: .insecurePKCS1v1_5)
    }
}

/// A failed security check below the channel (bad signature, bad padding, a block that does not
/// decrypt); the channel turns it into `OPCUAError.Kind.securityCheckFailed`.
struct UASecurityFault: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The keys one side of a secure channel uses for one security token.
struct UASymmetricKeys {
    var signingKey: SymmetricKey
    var encryptingKey: SymmetricKey
    var iv: [UInt8]

    /// Part 6 §6.7.5: the client's keys are P_SHA256(serverNonce, clientNonce), the server's
    /// P_SHA256(clientNonce, serverNonce); each is signing key (32), encrypting key (32), IV (16).
    static func derive(secret: [UInt8], seed: [UInt8]) -> UASymmetricKeys {
        let bytes = UACrypto.pSHA256(secret: secret, seed: seed, length: 32 + 32 + 16)
        return UASymmetricKeys(signingKey: SymmetricKey(data: bytes[0..<32]), encryptingKey: SymmetricKey(data: bytes[32..<64]),
                               iv: Array(bytes[64..<80]))
    }
}

/// The keys of one security token, both directions.
struct UATokenKeys {
    var client: UASymmetricKeys
    var server: UASymmetricKeys

    init(clientNonce: [UInt8], serverNonce: [UInt8]) {
        client = .derive(secret: serverNonce, seed: clientNonce)
        server = .derive(secret: clientNonce, seed: serverNonce)
    }
}

/// How one side's chunks are protected: signature size, and the block sizes of encryption
/// (plaintext block → ciphertext block), if encrypted.
struct UAChunkProtection {
    var signatureSize: Int
    var encrypted: Bool
    var plainBlock: Int
    var cipherBlock: Int
    /// An ExtraPaddingSize byte follows the padding (asymmetric keys over 2048 bits).
    var extraPaddingByte: Bool

    /// The most body bytes a chunk of `chunkSize` bytes can carry after `headerSize` bytes of
    /// message and security header (the sequence header, padding and signature taken off).
    func maxBody(chunkSize: Int, headerSize: Int) -> Int {
        let room = chunkSize - headerSize
        if !encrypted { return room - 8 - signatureSize }
        return (room / cipherBlock) * plainBlock - 8 - signatureSize - 1 - (extraPaddingByte ? 1 : 0)
    }

    /// The padding (PaddingSize byte, padding, ExtraPaddingSize) for `plainBytes` bytes of sequence
    /// header and body.
    func padding(forPlain plainBytes: Int) -> [UInt8] {
        guard encrypted else { return [] }
        let fixed = plainBytes + 1 + (extraPaddingByte ? 1 : 0) + signatureSize
        let count = (plainBlock - fixed % plainBlock) % plainBlock
        let low = UInt8(truncatingIfNeeded: count)
        var p = [UInt8](repeating: low, count: count + 1)
        if extraPaddingByte { p.append(UInt8(truncatingIfNeeded: count >> 8)) }
        return p
    }

    /// The size on the wire of `plain` bytes (sequence header … signature).
    func wireSize(ofPlain plain: Int) -> Int { encrypted ? plain / plainBlock * cipherBlock : plain }

    /// Checks and strips the padding from decrypted `plain` (signature already removed): every
    /// padding byte must equal PaddingSize.
    func stripPadding(_ plain: [UInt8]) throws(UASecurityFault) -> [UInt8] {
        guard encrypted else { return plain }
        var end = plain.count
        var count = 0
        if extraPaddingByte {
            guard end >= 1 else { throw UASecurityFault("no room for the padding") }
            count = Int(plain[end - 1]) << 8
            end -= 1
        }
        guard end >= 1 else { throw UASecurityFault("no room for the padding") }
        let low = plain[end - 1]
        count |= Int(low)
        end -= 1
        guard count <= end, end - count >= 8 else { throw UASecurityFault("padding of \(count) bytes in a \(plain.count)-byte chunk") }
        for i in (end - count)..<end where plain[i] != low {
            throw UASecurityFault("padding byte \(plain[i]) where \(low) belongs")
        }
        return Array(plain[0..<(end - count)])
    }
}
