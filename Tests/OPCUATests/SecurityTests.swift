import Crypto
import Foundation
import Platform
import Testing
import TestSupport
@testable import OPCUA

private func hexBytes(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16)!)
        i = j
    }
    return out
}

@Suite("OPC UA Basic256Sha256 building blocks")
struct SecurityPrimitiveTests {
    @Test("P_SHA256 gives the published TLS 1.2 PRF-SHA256 test vector")
    func pSHA256KnownVector() {
        let secret = hexBytes("9bbe436ba940f017b17652849a71db35")
        let seed = Array("test label".utf8) + hexBytes("a0ba9f936cda311827a6f796ffd5198c")
        let expected = hexBytes("e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af"
            + "0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66")
        #expect(UACrypto.pSHA256(secret: secret, seed: seed, length: 100) == expected)
    }

    @Test("client and server keys come from the nonces the other way round: 32-byte keys, 16-byte IV")
    func keyDerivationDirections() {
        let a = UACrypto.random(32), b = UACrypto.random(32)
        let keys = UATokenKeys(clientNonce: a, serverNonce: b)
        let mirrored = UATokenKeys(clientNonce: b, serverNonce: a)
        #expect(keys.client.iv.count == 16 && keys.server.iv.count == 16)
        #expect(keys.client.iv == mirrored.server.iv)
        #expect(keys.client.iv != keys.server.iv)
        let bytes = UACrypto.pSHA256(secret: b, seed: a, length: 80)
        #expect(keys.client.iv == Array(bytes[64..<80]))
        #expect(keys.client.signingKey.withUnsafeBytes { Array($0) } == Array(bytes[0..<32]))
        #expect(keys.client.encryptingKey.withUnsafeBytes { Array($0) } == Array(bytes[32..<64]))
    }

    @Test("symmetric padding fills sequence header, body, padding and signature to whole AES blocks; every padding byte is its count")
    func symmetricPadding() throws {
        let p = UAChunkProtection(signatureSize: 32, encrypted: true, plainBlock: 16, cipherBlock: 16, extraPaddingByte: false)
        for plain in 8..<80 {
            let pad = p.padding(forPlain: plain)
            #expect((plain + pad.count + 32) % 16 == 0)
            #expect(pad.allSatisfy { $0 == UInt8(pad.count - 1) })
            let message = [UInt8](repeating: 0xAB, count: plain) + pad
            #expect(try p.stripPadding(message) == [UInt8](repeating: 0xAB, count: plain))
        }
    }

    @Test("asymmetric padding for a 2048-bit key fills to 214-byte OAEP blocks; a 4096-bit key adds the ExtraPaddingSize byte")
    func asymmetricPadding() throws {
        let p2048 = UAChunkProtection(signatureSize: 256, encrypted: true, plainBlock: 214, cipherBlock: 256, extraPaddingByte: false)
        for plain in [8, 100, 213, 500] {
            #expect((plain + p2048.padding(forPlain: plain).count + 256) % 214 == 0)
        }
        let p4096 = UAChunkProtection(signatureSize: 512, encrypted: true, plainBlock: 470, cipherBlock: 512, extraPaddingByte: true)
        let pad = p4096.padding(forPlain: 30)
        #expect((30 + pad.count + 512) % 470 == 0)
        let count = Int(pad[pad.count - 1]) << 8 | Int(pad[0])
        #expect(count == pad.count - 2)
        #expect(try p4096.stripPadding([UInt8](repeating: 7, count: 30) + pad) == [UInt8](repeating: 7, count: 30))
    }

    @Test("bad padding is refused: a padding byte that differs, a count longer than the chunk")
    func badPadding() {
        let p = UAChunkProtection(signatureSize: 32, encrypted: true, plainBlock: 16, cipherBlock: 16, extraPaddingByte: false)
        var message = [UInt8](repeating: 1, count: 20) + p.padding(forPlain: 20)
        message[message.count - 2] ^= 0xFF
        #expect(throws: UASecurityFault.self) { try p.stripPadding(message) }
        #expect(throws: UASecurityFault.self) { try p.stripPadding([UInt8](repeating: 1, count: 9) + [200]) }
        #expect(throws: UASecurityFault.self) { try p.stripPadding([]) }
    }

    @Test("RSA: OAEP-SHA1 in blocks round-trips; a PKCS#1 v1.5 SHA-256 signature verifies, a changed byte does not")
    func rsaRoundTrip() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try OPCUACertificateTool.makeCertificate(directory: dir, applicationUri: "urn:test:rsa", host: "localhost")
        let me = try UALocalIdentity.load(certificatePath: "\(dir)/cert.der", privateKeyPath: "\(dir)/key.pem")
        let peer = try UARemoteCertificate(der: me.certificateDER)
        let secret = UACrypto.random(500)
        let sealed = try UACrypto.rsaEncrypt(secret, with: peer.encryptionKey)
        #expect(sealed.count == 3 * 256)
        #expect(try UACrypto.rsaDecrypt(sealed[...], with: me.decryptionKey) == secret)
        var signature = try UACrypto.rsaSign(secret, with: me.signingKey)
        #expect(UACrypto.rsaVerify(signature, secret, with: peer.verifyKey))
        signature[10] ^= 1
        #expect(!UACrypto.rsaVerify(signature, secret, with: peer.verifyKey))
    }
}

private func temporaryDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-sec-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func runOpenSSL(_ args: [String]) throws -> String { try runProcess("/usr/bin/openssl", args).1 }

@Suite("OPC UA application instance certificate")
struct CertificateToolTests {
    @Test("opcua cert makes an RSA 2048 SHA-256 certificate openssl reads: URI and DNS in subjectAltName, key usages, key file 0600")
    func makesCertificate() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try OPCUACertificateTool.makeCertificate(directory: dir, applicationUri: "urn:plant7:tibet-twin", host: "guard7")
        let text = try runOpenSSL(["x509", "-inform", "der", "-in", made.certificateDER, "-noout", "-text"])
        #expect(text.contains("URI:urn:plant7:tibet-twin"))
        #expect(text.contains("DNS:guard7"))
        #expect(text.contains("Public-Key: (2048 bit)"))
        #expect(text.contains("sha256WithRSAEncryption"))
        #expect(text.contains("Digital Signature, Non Repudiation, Key Encipherment, Data Encipherment"))
        #expect(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        let fingerprint = try runOpenSSL(["x509", "-inform", "der", "-in", made.certificateDER, "-noout", "-fingerprint", "-sha1"])
        #expect(fingerprint.lowercased().replacingOccurrences(of: ":", with: "").contains(made.thumbprint))
        let mode = try FileManager.default.attributesOfItem(atPath: made.privateKeyPEM)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // openssl reads the key, and it belongs to the certificate.
        let keyModulus = try runOpenSSL(["rsa", "-in", made.privateKeyPEM, "-noout", "-modulus"])
        let certModulus = try runOpenSSL(["x509", "-inform", "der", "-in", made.certificateDER, "-noout", "-modulus"])
        #expect(!keyModulus.isEmpty && keyModulus == certModulus)
        let identity = try UALocalIdentity.load(certificatePath: made.certificatePEM, privateKeyPath: made.privateKeyPEM)
        #expect(identity.applicationUri == "urn:plant7:tibet-twin")
    }

    @Test("opcua cert refuses to overwrite an existing certificate unless forced")
    func refusesOverwrite() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try OPCUACertificateTool.makeCertificate(directory: dir, applicationUri: "urn:a", host: "h")
        #expect(throws: OPCUACertificateTool.Failure.self) {
            _ = try OPCUACertificateTool.makeCertificate(directory: dir, applicationUri: "urn:a", host: "h")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: first.certificateDER)).count > 0)
        let second = try OPCUACertificateTool.makeCertificate(directory: dir, applicationUri: "urn:a", host: "h", force: true)
        #expect(second.thumbprint != first.thumbprint)
    }

    @Test("a key that does not belong to the certificate is refused when loading")
    func mismatchedKey() throws {
        let a = try temporaryDirectory(), b = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: a); try? FileManager.default.removeItem(atPath: b) }
        _ = try OPCUACertificateTool.makeCertificate(directory: a, applicationUri: "urn:a", host: "h")
        _ = try OPCUACertificateTool.makeCertificate(directory: b, applicationUri: "urn:b", host: "h")
        #expect { try UALocalIdentity.load(certificatePath: "\(a)/cert.der", privateKeyPath: "\(b)/key.pem") } throws: { e in
            (e as? OPCUAError)?.description.contains("does not belong") == true
        }
    }
}

/// Files for one secured test: our certificate, the server's, the trust directory.
private struct SecureRig {
    let root: String
    let client: String
    let server: String
    let trust: String

    init(trustServer: Bool = true) throws {
        root = try temporaryDirectory()
        client = root + "/client"
        trust = root + "/trust"
        _ = try OPCUACertificateTool.makeCertificate(directory: client, applicationUri: "urn:tibet-twin:test-client", host: "localhost")
        server = try makeServerCertificate()
        try FileManager.default.createDirectory(atPath: trust, withIntermediateDirectories: true)
        if trustServer { try FileManager.default.copyItem(atPath: server + "/cert.der", toPath: trust + "/server.der") }
    }

    func options(_ mode: OPCUASecurity.Mode) -> OPCUAClientOptions {
        var o = OPCUAClientOptions()
        o.security = OPCUASecurity(policy: .basic256Sha256, mode: mode, certificatePath: client + "/cert.der",
                                   privateKeyPath: client + "/key.pem", trustDirectory: trust)
        return o
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: root)
        try? FileManager.default.removeItem(atPath: server)
    }
}

/// Reads the server time until the channel was renewed twice or a read fails (liveness, not
/// timing: 30 s at most); returns the renewals, every token id seen and the last value.
func readUntilRenewedTwice(_ c: OPCUAClient) -> (Int, Set<UInt32>, DataValue) {
    var tokens: Set<UInt32> = [c.channelTokenId]
    var last = DataValue()
    _ = waitUntil(within: 30) {
        last = (try? c.readValues([.numeric(2258)])[0]) ?? DataValue(status: .bad)
        tokens.insert(c.channelTokenId)
        return c.channelRenewals >= 2 || !last.status.isGood
    }
    return (c.channelRenewals, tokens, last)
}

private func connectError(_ endpoint: String, _ options: OPCUAClientOptions) async throws -> OPCUAError? {
    try await onThread { () -> OPCUAError? in
        let c = try OPCUAClient(endpoint: endpoint, options: options)
        do { try c.connect() } catch let e as OPCUAError { return e }
        c.disconnect()
        return nil
    }
}

/// Basic256Sha256 against a real asyncua 2.1.0 server with its own certificate (openssl).
@Suite("OPC UA Basic256Sha256 against asyncua", .serialized)
struct AsyncuaSecurityTests {
    /// Read, Browse and a subscription's first notification over one secured session.
    private func readBrowseSubscribe(_ mode: OPCUASecurity.Mode) async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server, secureModes: ["sign", "signandencrypt"])
        defer { server.stop() }
        let endpoint = server.endpoint
        let options = rig.options(mode)
        let (values, references, notified) = try await onThread { () -> ([DataValue], [ReferenceDescription], [DataChange]) in
            let c = try OPCUAClient(endpoint: endpoint, options: options)
            try c.connect()
            defer { c.disconnect() }
            let values = try c.readValues([.string("Crane01.PosX", namespace: 2), .string("Crane01.Name", namespace: 2)])
            let references = try c.browse(.string("Many", namespace: 2))
            let sub = try c.createSubscription(publishingIntervalMs: 50)
            _ = try c.createMonitoredItems(subscription: sub.id, [MonitoredItemRequest(.string("Crane01.PosX", namespace: 2), clientHandle: 1, samplingIntervalMs: 50)])
            try server.command("set PosX double 44.5")
            var seen: [DataChange] = []
            var tracker = SequenceTracker()
            let deadline = Date().addingTimeInterval(30)
            while !seen.contains(where: { $0.value.value == .double(44.5) }) && Date() < deadline {
                let acks = tracker.takeAcks().map { (sub.id, $0) }
                let r = try c.publish(acknowledging: acks, timeoutMs: Int(sub.keepAliveMs) + 5000)
                _ = tracker.receive(r.message.sequenceNumber, keepAlive: r.message.isKeepAlive)
                seen += r.message.dataChanges
            }
            return (values, references, seen)
        }
        #expect(values.map(\.value) == [.double(12.5), .string("crane one")])
        #expect(references.count == 40)
        #expect(notified.contains { $0.clientHandle == 1 && $0.value.value == .double(44.5) })
    }

    @Test("Read, Browse and a subscription over Basic256Sha256 Sign")
    func sign() async throws { try await readBrowseSubscribe(.sign) }

    @Test("Read, Browse and a subscription over Basic256Sha256 SignAndEncrypt")
    func signAndEncrypt() async throws { try await readBrowseSubscribe(.signAndEncrypt) }

    @Test("user name login over SignAndEncrypt and over Sign (where the server takes only an RSA-encrypted password); a wrong password is refused")
    func userNameLogin() async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        for mode in [OPCUASecurity.Mode.signAndEncrypt, .sign] {
            // Over Sign the server is told to refuse a password that is not encrypted: the login
            // succeeds only if the client encrypted it with the server's key.
            let server = try OPCUAPeer.asyncua(users: ["operator": "s3cret"], certificateDirectory: rig.server, secureModes: ["sign", "signandencrypt"],
                                               encryptedPasswordsOnly: mode == .sign)
            defer { server.stop() }
            var o = rig.options(mode)
            o.identity = .userName("operator", password: Array("s3cret".utf8))
            let good = o
            let value = try await onThread { () -> DataValue in
                let c = try OPCUAClient(endpoint: server.endpoint, options: good)
                try c.connect()
                defer { c.disconnect() }
                return try c.readValues([.string("Crane01.Mode", namespace: 2)])[0]
            }
            #expect(value.value == .int32(1), "\(mode)")
            o.identity = .userName("operator", password: Array("wrong".utf8))
            let e = try await connectError(server.endpoint, o)
            #expect(e?.operation == "ActivateSession", "\(mode)")
            #expect(e?.statusCode?.isBad == true, "\(mode)")
        }
    }

    @Test("a server certificate not in the trust directory is refused, saved, and the message says how to trust it; trusted, it connects")
    func untrustedServer() async throws {
        let rig = try SecureRig(trustServer: false)
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server)
        defer { server.stop() }
        let e = try #require(try await connectError(server.endpoint, rig.options(.signAndEncrypt)))
        guard case .securityCheckFailed(let why) = e.kind else { Issue.record("unexpected \(e)"); return }
        #expect(why.contains("is not trusted"))
        #expect(why.contains("tibet-twin opcua trust \(rig.trust)/rejected/"))
        let rejected = try FileManager.default.contentsOfDirectory(atPath: rig.trust + "/rejected")
        #expect(rejected.count == 1)
        let saved = try Data(contentsOf: URL(fileURLWithPath: rig.trust + "/rejected/" + rejected[0]))
        #expect(saved == (try Data(contentsOf: URL(fileURLWithPath: rig.server + "/cert.der"))))
        _ = try OPCUACertificateTool.trust(certificate: rig.trust + "/rejected/" + rejected[0], trustDirectory: rig.trust)
        #expect(try await connectError(server.endpoint, rig.options(.signAndEncrypt)) == nil)
    }

    @Test("a trusted server certificate whose application URI is not the server's: refused, naming the URI check")
    func applicationUriMismatch() async throws {
        let rig = try SecureRig(trustServer: false)
        defer { rig.remove() }
        // A certificate for another application, trusted, served by this server.
        let other = rig.root + "/other"
        let made = try OPCUACertificateTool.makeCertificate(directory: other, applicationUri: "urn:somewhere:else", host: "localhost")
        try FileManager.default.removeItem(atPath: rig.server + "/cert.der")
        try FileManager.default.removeItem(atPath: rig.server + "/key.pem")
        try FileManager.default.copyItem(atPath: made.certificateDER, toPath: rig.server + "/cert.der")
        try FileManager.default.copyItem(atPath: made.privateKeyPEM, toPath: rig.server + "/key.pem")
        try FileManager.default.copyItem(atPath: made.certificateDER, toPath: rig.trust + "/server.der")
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server)
        defer { server.stop() }
        let e = try #require(try await connectError(server.endpoint, rig.options(.signAndEncrypt)))
        guard case .securityCheckFailed(let why) = e.kind else { Issue.record("unexpected \(e)"); return }
        #expect(why.contains("application URI check failed"))
        #expect(why.contains("urn:somewhere:else"))
    }

    @Test("a server that does not trust our certificate: a clear error naming our certificate; once it trusts it, the session opens")
    func serverRefusesOurCertificate() async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        let serverTrust = rig.root + "/server-trusts"
        try FileManager.default.createDirectory(atPath: serverTrust, withIntermediateDirectories: true)
        // asyncua wants at least one certificate in its trust store: its own, not ours.
        try FileManager.default.copyItem(atPath: rig.server + "/cert.der", toPath: serverTrust + "/itself.der")
        do {
            let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server, trustedClients: serverTrust)
            defer { server.stop() }
            let e = try #require(try await connectError(server.endpoint, rig.options(.signAndEncrypt)))
            guard case .securityCheckFailed(let why) = e.kind else { Issue.record("unexpected \(e)"); return }
            #expect(why.contains("the server refused our certificate"))
            #expect(why.contains("BadCertificateUntrusted"))
            #expect(why.contains(rig.client + "/cert.der"))
        }
        try FileManager.default.copyItem(atPath: rig.client + "/cert.der", toPath: serverTrust + "/tibet-twin.der")
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server, trustedClients: serverTrust)
        defer { server.stop() }
        #expect(try await connectError(server.endpoint, rig.options(.signAndEncrypt)) == nil)
    }

    @Test("SignAndEncrypt: the channel is renewed with new keys before its token expires, and requests go on")
    func renewalWithNewKeys() async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server)
        defer { server.stop() }
        var options = rig.options(.signAndEncrypt)
        options.secureChannelLifetimeMs = 1000
        let short = options
        let (renewals, tokens, last) = try await onThread { () -> (Int, Set<UInt32>, DataValue) in
            let c = try OPCUAClient(endpoint: server.endpoint, options: short)
            try c.connect()
            defer { c.disconnect() }
            return readUntilRenewedTwice(c)
        }
        #expect(renewals >= 2)
        #expect(tokens.count >= 3)
        #expect(last.status.isGood)
    }

    /// Connects through the tamper proxy, arms `flip KIND`, and reads until an error.
    private func tampered(_ kind: String, mode: OPCUASecurity.Mode, lifetimeMs: UInt32 = 600_000) async throws -> (OPCUAError?, Bool, DataValue?) {
        let rig = try SecureRig()
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server, secureModes: ["sign", "signandencrypt"])
        defer { server.stop() }
        let proxy = try OPCUAPeer.tamperProxy(upstreamPort: server.port)
        defer { proxy.stop() }
        var options = rig.options(mode)
        options.secureChannelLifetimeMs = lifetimeMs
        let chosen = options
        return try await onThread { () -> (OPCUAError?, Bool, DataValue?) in
            let c = try OPCUAClient(endpoint: proxy.endpoint, options: chosen)
            try c.connect()
            defer { c.disconnect() }
            _ = try c.readValues([.numeric(2258)])
            try proxy.command("flip \(kind)")
            var caught: OPCUAError?
            _ = waitUntil(within: 30) {
                do { _ = try c.readValues([.numeric(2258)]); return false } catch let e as OPCUAError { caught = e; return true } catch { return true }
            }
            let connected = c.isConnected
            try c.connect()
            let after = try? c.readValues([.string("Crane01.Mode", namespace: 2)])[0]
            return (caught, connected, after)
        }
    }

    @Test("a bit flipped in an encrypted message closes the channel with a security error; reconnecting works")
    func tamperedEncryptedMessage() async throws {
        let (e, connected, after) = try await tampered("MSG", mode: .signAndEncrypt)
        guard case .securityCheckFailed? = e?.kind else { Issue.record("unexpected \(String(describing: e))"); return }
        #expect(!connected)
        #expect(after?.value == .int32(1))
    }

    @Test("a bit flipped in a signed message (Sign) closes the channel with a security error")
    func tamperedSignedMessage() async throws {
        let (e, connected, _) = try await tampered("MSG", mode: .sign)
        guard case .securityCheckFailed(let why)? = e?.kind else { Issue.record("unexpected \(String(describing: e))"); return }
        #expect(why.contains("signature"))
        #expect(!connected)
    }

    @Test("a bit flipped in the server's OpenSecureChannel renewal answer closes the channel with a security error")
    func tamperedRenewal() async throws {
        let (e, connected, after) = try await tampered("OPN", mode: .signAndEncrypt, lifetimeMs: 1000)
        guard case .securityCheckFailed? = e?.kind else { Issue.record("unexpected \(String(describing: e))"); return }
        #expect(!connected)
        #expect(after?.value == .int32(1))
    }

    @Test("SignAndEncrypt: a request and its response that span several chunks each, with the encryption overhead per chunk")
    func manyChunks() async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server)
        defer { server.stop() }
        var options = rig.options(.signAndEncrypt)
        options.tcpLimits.receiveBufferSize = 8192
        options.tcpLimits.sendBufferSize = 8192
        let chosen = options
        // 1200 string NodeIds (about 26 bytes each) do not fit one 8192-byte chunk; nor do 1200 answers.
        let items = (0..<1200).map { NodeId.string("Many.Item\(String(format: "%02d", $0 % 40))", namespace: 2) }
        let values = try await onThread { () -> [DataValue] in
            let c = try OPCUAClient(endpoint: server.endpoint, options: chosen)
            try c.connect()
            defer { c.disconnect() }
            return try c.readValues(items)
        }
        #expect(values.count == 1200)
        #expect(values.enumerated().allSatisfy { $0.element.value == .int32(Int32($0.offset % 40)) })
    }

    @Test("a mode the server does not offer is refused, listing what it offers")
    func modeNotOffered() async throws {
        let rig = try SecureRig()
        defer { rig.remove() }
        let server = try OPCUAPeer.asyncua(certificateDirectory: rig.server, secureModes: ["signandencrypt"])
        defer { server.stop() }
        let e = try #require(try await connectError(server.endpoint, rig.options(.sign)))
        guard case .refused(let why) = e.kind else { Issue.record("unexpected \(e)"); return }
        #expect(why.contains("no Basic256Sha256/Sign endpoint"))
        #expect(why.contains("Basic256Sha256/SignAndEncrypt"))
    }
}
