import Crypto
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A UA-TCP connection and the secure channel over it: Hello / Acknowledge, OpenSecureChannel
/// (renewed at 75 % of the token's lifetime, with new keys), chunked requests and responses with
/// every negotiated limit enforced, CloseSecureChannel. Security policy None, or Basic256Sha256
/// in mode Sign or SignAndEncrypt (`UAChannelSecurity`): OpenSecureChannel signed with our RSA
/// key and encrypted for the server's, every other message signed with HMAC-SHA256 and, in
/// SignAndEncrypt, encrypted with AES-256-CBC under keys derived from both nonces. A chunk whose
/// signature or padding does not verify closes the channel (`securityCheckFailed`).
///
/// One request at a time, from one thread: `call` sends a request and blocks until its
/// response (or the deadline). Any transport or protocol failure closes the channel; later
/// calls throw `channelClosed`. Not for the Swift cooperative pool.
final class UASecureChannel: @unchecked Sendable {
    static let policyNone = "http://opcfoundation.org/UA/SecurityPolicy#None"

    let endpoint: UAEndpointURL
    let limits: UATCPLimits
    let decodingLimits: UAEncodingLimits
    /// Lifetime asked for each security token, ms.
    let requestedLifetimeMs: UInt32
    /// Nil: security policy None.
    let security: UAChannelSecurity?
    /// The keys of the current and (until the server uses the new one) the previous token.
    private var tokenKeys: [UInt32: UATokenKeys] = [:]

    /// Written only by the owning thread, under `socketLock`, so `interrupt()` from another
    /// thread never meets a closed (possibly reused) descriptor.
    private var socket: UASocket?
    private let socketLock = MonotonicCondition()
    private var sendLimits = UATCPSendLimits(chunkSize: 8192, maxMessageSize: 0, maxChunkCount: 0)
    private(set) var channelId: UInt32 = 0
    private(set) var tokenId: UInt32 = 0
    private var previousTokenId: UInt32?
    private var tokenCreatedNs: Int64 = 0
    private(set) var revisedLifetimeMs: UInt32 = 0
    private var sendSequence: UInt32 = 0
    private var lastReceivedSequence: UInt32?
    private var nextRequestId: UInt32 = 0
    private var requestHandle: UInt32 = 0
    /// How many times the token was renewed.
    private(set) var renewals = 0
    private var closedBy: OPCUAError?

    init(endpoint: UAEndpointURL, limits: UATCPLimits, decodingLimits: UAEncodingLimits, requestedLifetimeMs: UInt32,
         security: UAChannelSecurity? = nil) {
        self.security = security
        self.endpoint = endpoint
        self.limits = limits
        self.decodingLimits = decodingLimits
        self.requestedLifetimeMs = requestedLifetimeMs
    }

    deinit { socket?.close() }

    var isOpen: Bool { socket != nil && closedBy == nil }

    func error(_ kind: OPCUAError.Kind, _ operation: String) -> OPCUAError {
        OPCUAError(kind, operation: operation, endpoint: endpoint.text)
    }

    // MARK: open, renew, close

    /// Connects, exchanges Hello / Acknowledge and opens the secure channel.
    func open(timeoutMs: Int) throws(OPCUAError) {
        guard let address = NetAddress(host: endpoint.host, port: endpoint.port) else {
            throw error(.badEndpoint("host \(endpoint.host) does not resolve"), "connect")
        }
        let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
        do {
            let s = try UASocket(connectingTo: address, timeoutMs: timeoutMs)
            socketLock.withLock { socket = s }
        } catch {
            throw self.error(error.rawValue == ETIMEDOUT ? .timeout : .connect(error), "connect")
        }
        try sendRaw(UAHello(limits: limits, endpointUrl: endpoint.text).encoded(), "Hello", deadline)
        let (header, body) = try receiveChunk("Hello", deadline)
        var r = UABinaryReader(body, limits: decodingLimits)
        switch header.type {
        case .acknowledge:
            try closingOnFailure("Hello") {
                let ack = try UAAcknowledge(decoding: &r)
                sendLimits = try ack.sendLimits(offered: limits)
            }
        default:
            throw fail(.protocolViolation("expected ACK, got \(header.type.rawValue)"), "Hello")
        }
        try openSecureChannel(renew: false, deadline: deadline)
    }

    /// Renews the security token when 75 % of its lifetime has passed.
    func renewIfDue(timeoutMs: Int) throws(OPCUAError) {
        guard isOpen, revisedLifetimeMs > 0 else { return }
        let age = monotonicNowNs() - tokenCreatedNs
        if age >= Int64(revisedLifetimeMs) * 750_000 {
            try openSecureChannel(renew: true, deadline: monotonicNowNs() + Int64(timeoutMs) * 1_000_000)
            renewals += 1
        }
    }

    private func openSecureChannel(renew: Bool, deadline: Int64) throws(OPCUAError) {
        let op = renew ? "OpenSecureChannel (renew)" : "OpenSecureChannel"
        var body = UABinaryWriter()
        body.writeNodeId(.numeric(446))
        writeRequestHeader(&body, authenticationToken: .null, timeoutHint: UInt32(clamping: max(0, (deadline - monotonicNowNs()) / 1_000_000)))
        body.writeUInt32(0)  // ClientProtocolVersion
        body.writeUInt32(renew ? 1 : 0)  // RequestType: Issue, Renew
        body.writeUInt32(security?.mode.rawValue ?? MessageSecurityMode.none.rawValue)
        let clientNonce = security == nil ? [] : UACrypto.random(UACrypto.nonceLength)
        body.writeByteString(clientNonce)
        body.writeUInt32(requestedLifetimeMs)
        let requestId = try sendMessage(.open, body.bytes, op, deadline)
        var r = try receiveMessage(requestId: requestId, op, deadline)
        try closingOnFailure(op) {
            let typeId = try r.readNodeId("OpenSecureChannelResponse.TypeId")
            if typeId == .numeric(397) {
                let h = try ResponseHeader(decoding: &r)
                throw fail(.serviceFault(h.serviceResult.isGood ? .bad : h.serviceResult), op)
            }
            guard typeId == .numeric(449) else { throw fail(.protocolViolation("expected OpenSecureChannelResponse, got \(typeId)"), op) }
            let h = try ResponseHeader(decoding: &r)
            guard !h.serviceResult.isBad else { throw fail(.serviceFault(h.serviceResult), op) }
            _ = try r.readUInt32("ServerProtocolVersion")
            let channel = try r.readUInt32("SecurityToken.ChannelId")
            let token = try r.readUInt32("SecurityToken.TokenId")
            _ = try r.readDateTime("SecurityToken.CreatedAt")
            let lifetime = try r.readUInt32("SecurityToken.RevisedLifetime")
            let serverNonce = try r.readByteString("ServerNonce") ?? []
            if security != nil, serverNonce.count != UACrypto.nonceLength {
                throw fail(.securityCheckFailed("the server's nonce has \(serverNonce.count) bytes, Basic256Sha256 needs \(UACrypto.nonceLength)"), op)
            }
            guard channel != 0, !renew || channel == channelId else {
                throw fail(.protocolViolation("OpenSecureChannel answered with channel id \(channel) (ours \(channelId))"), op)
            }
            channelId = channel
            if renew { previousTokenId = tokenId }
            tokenId = token
            if security != nil {
                tokenKeys = tokenKeys.filter { $0.key == previousTokenId }
                tokenKeys[token] = UATokenKeys(clientNonce: clientNonce, serverNonce: serverNonce)
            }
            tokenCreatedNs = monotonicNowNs()
            revisedLifetimeMs = lifetime
        }
    }

    /// Sends CloseSecureChannel (no answer comes) and closes the socket.
    func close() {
        if isOpen {
            var body = UABinaryWriter()
            body.writeNodeId(.numeric(452))
            writeRequestHeader(&body, authenticationToken: .null, timeoutHint: 1000)
            _ = try? sendMessage(.close, body.bytes, "CloseSecureChannel", monotonicNowNs() + 1_000_000_000)
        }
        closedBy = closedBy ?? error(.channelClosed, "close")
        dropSocket()
    }

    /// Runs `body`, making what it throws an `OPCUAError`: one already made passes as it is; a
    /// decoding error, a failure kind or anything else closes the channel.
    func closingOnFailure<T>(_ operation: String, _ body: () throws -> T) throws(OPCUAError) -> T {
        do {
            return try body()
        } catch let e as OPCUAError {
            throw e
        } catch let e as UADecodingError {
            throw fail(.decoding(e), operation)
        } catch let k as OPCUAError.Kind {
            throw fail(k, operation)
        } catch {
            throw fail(.protocolViolation("\(error)"), operation)
        }
    }

    /// Interrupts a blocked call from another thread (it fails with a closed connection).
    func interrupt() { socketLock.withLock { socket?.shutdown() } }

    private func dropSocket() {
        socketLock.withLock {
            socket?.close()
            socket = nil
        }
    }

    /// Marks the channel failed with `kind` and closes the socket; returns the error to throw.
    func fail(_ kind: OPCUAError.Kind, _ operation: String) -> OPCUAError {
        let e = error(kind, operation)
        if closedBy == nil { closedBy = e }
        dropSocket()
        return e
    }

    // MARK: requests

    /// The next request handle (for the RequestHeader).
    func nextRequestHandle() -> UInt32 {
        requestHandle &+= 1
        if requestHandle == 0 { requestHandle = 1 }
        return requestHandle
    }

    func writeRequestHeader(_ w: inout UABinaryWriter, authenticationToken: NodeId, timeoutHint: UInt32) {
        w.writeNodeId(authenticationToken)
        w.writeDateTime(.now())
        w.writeUInt32(nextRequestHandle())
        w.writeUInt32(0)  // ReturnDiagnostics
        w.writeString(nil)  // AuditEntryId
        w.writeUInt32(timeoutHint)
        w.writeExtensionObject(.empty)  // AdditionalHeader
    }

    /// Sends one service request (`body` starts with its type id) and returns the response body
    /// positioned after the response type id, with that type id.
    func call(_ service: String, body: [UInt8], timeoutMs: Int) throws(OPCUAError) -> (typeId: NodeId, reader: UABinaryReader) {
        guard isOpen else { throw closedBy ?? error(.channelClosed, service) }
        try renewIfDue(timeoutMs: timeoutMs)
        let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
        let requestId = try sendMessage(.message, body, service, deadline)
        var r = try receiveMessage(requestId: requestId, service, deadline)
        do {
            let typeId = try r.readNodeId("\(service)Response.TypeId")
            return (typeId, r)
        } catch {
            throw fail(.decoding(error), service)
        }
    }

    /// Chunks and sends a message; returns its request id.
    private func sendMessage(_ type: UATCPMessageType, _ body: [UInt8], _ op: String, _ deadline: Int64) throws(OPCUAError) -> UInt32 {
        guard isOpen else { throw closedBy ?? error(.channelClosed, op) }
        nextRequestId &+= 1
        if nextRequestId == 0 { nextRequestId = 1 }
        let requestId = nextRequestId
        var securityHeader = UABinaryWriter()
        if type == .open {
            securityHeader.writeString(security?.policyUri ?? Self.policyNone)
            securityHeader.writeByteString(security?.local.certificateDER)  // SenderCertificate
            securityHeader.writeByteString(security?.remote.thumbprint)  // ReceiverCertificateThumbprint
        } else {
            securityHeader.writeUInt32(tokenId)
        }
        let protection = sendProtection(type)
        let headerSize = UATCPHeader.size + 4 + securityHeader.bytes.count
        let maxBody = protection.maxBody(chunkSize: Int(sendLimits.chunkSize), headerSize: headerSize)
        let overhead = Int(sendLimits.chunkSize) - maxBody
        guard maxBody > 0 else { throw fail(.limitExceeded("send buffer of \(sendLimits.chunkSize) bytes holds no body"), op) }
        let chunkCount = max(1, (body.count + maxBody - 1) / maxBody)
        if sendLimits.maxChunkCount > 0, chunkCount > Int(sendLimits.maxChunkCount) {
            throw error(.limitExceeded("request needs \(chunkCount) chunks, the server takes \(sendLimits.maxChunkCount)"), op)
        }
        if sendLimits.maxMessageSize > 0, body.count > Int(sendLimits.maxMessageSize) {
            throw error(.limitExceeded("request of \(body.count) bytes, the server takes \(sendLimits.maxMessageSize)"), op)
        }
        var out = UABinaryWriter(capacity: body.count + chunkCount * overhead)
        for i in 0..<chunkCount {
            let part = body[min(body.count, i * maxBody)..<min(body.count, (i + 1) * maxBody)]
            sendSequence &+= 1
            if sendSequence == 0 { sendSequence = 1 }
            var plain = UABinaryWriter(capacity: part.count + 8 + protection.signatureSize + 32)
            plain.writeUInt32(sendSequence)
            plain.writeUInt32(requestId)
            plain.writeBytes(Array(part))
            plain.writeBytes(protection.padding(forPlain: plain.bytes.count))
            let messageSize = headerSize + protection.wireSize(ofPlain: plain.bytes.count + protection.signatureSize)
            var head = UABinaryWriter(capacity: headerSize)
            UATCPHeader(type: type, chunk: UInt8(ascii: i == chunkCount - 1 ? "F" : "C"), messageSize: UInt32(messageSize)).write(into: &head)
            head.writeUInt32(channelId)
            head.writeBytes(securityHeader.bytes)
            out.writeBytes(head.bytes)
            if security == nil {
                out.writeBytes(plain.bytes)
            } else {
                out.writeBytes(try protect(type, head: head.bytes, plain: plain.bytes, protection, op))
            }
        }
        try sendRaw(out.bytes, op, deadline)
        return requestId
    }

    private func sendRaw(_ bytes: [UInt8], _ op: String, _ deadline: Int64) throws(OPCUAError) {
        guard let socket else { throw closedBy ?? error(.channelClosed, op) }
        do { try socket.send(bytes, deadlineNs: deadline) } catch {
            throw fail(error.rawValue == ETIMEDOUT ? .timeout : .socket(error), op)
        }
    }

    /// Reads one chunk: header checked (type, chunk type, size within our receive buffer)
    /// before the body is read. An ERR message closes the channel with its StatusCode.
    private func receiveChunk(_ op: String, _ deadline: Int64) throws(OPCUAError) -> (UATCPHeader, [UInt8]) {
        guard let socket else { throw closedBy ?? error(.channelClosed, op) }
        var head = [UInt8](repeating: 0, count: UATCPHeader.size)
        try read(socket, &head, UATCPHeader.size, op, deadline)
        let header: UATCPHeader
        do { header = try UATCPHeader.parse(head, maxSize: limits.receiveBufferSize) } catch { throw fail(error, op) }
        var body = [UInt8](repeating: 0, count: Int(header.messageSize) - UATCPHeader.size)
        try read(socket, &body, body.count, op, deadline)
        if header.type == .error {
            var r = UABinaryReader(body, limits: decodingLimits)
            try closingOnFailure(op) {
                let e = try UATCPErrorBody(decoding: &r)
                throw fail(.serverError(e.status, reason: e.reason), op)
            }
        }
        return (header, body)
    }

    private func read(_ socket: UASocket, _ buffer: inout [UInt8], _ count: Int, _ op: String, _ deadline: Int64) throws(OPCUAError) {
        do { try socket.read(into: &buffer, offset: 0, count: count, deadlineNs: deadline) } catch {
            switch error {
            case .closedByPeer: throw fail(.closedByPeer, op)
            case .errno(let e): throw fail(e.rawValue == ETIMEDOUT ? .timeout : .socket(e), op)
            }
        }
    }

    /// Receives the chunks of the response to `requestId` and returns the reassembled body.
    /// Checks on every chunk: message type, channel id, security header, token, sequence
    /// number, request id; on the message: the chunk count and total size limits.
    private func receiveMessage(requestId: UInt32, _ op: String, _ deadline: Int64) throws(OPCUAError) -> UABinaryReader {
        var message: [UInt8] = []
        var chunks = 0
        while true {
            let (header, chunkBody) = try receiveChunk(op, deadline)
            var r = UABinaryReader(chunkBody, limits: decodingLimits)
            var body = chunkBody
            try closingOnFailure(op) {
                guard header.type == .message || header.type == .open else {
                    throw fail(.protocolViolation("unexpected \(header.type.rawValue) message"), op)
                }
                let channel = try r.readUInt32("SecureChannelId")
                if header.type == .open {
                    let policy = try r.readString("SecurityPolicyUri")
                    let ours = security?.policyUri ?? Self.policyNone
                    guard policy == ours else {
                        throw fail(.protocolViolation("server answered with security policy \(policy ?? "null"), asked for \(ours)"), op)
                    }
                    let sender = try r.readByteString("SenderCertificate")
                    let thumbprint = try r.readByteString("ReceiverCertificateThumbprint")
                    guard channelId == 0 || channel == channelId else {
                        throw fail(.protocolViolation("channel id \(channel), ours is \(channelId)"), op)
                    }
                    if let security {
                        // The sender's certificate, possibly followed by its issuers' (Part 6 §6.7.2).
                        guard let sender, sender.starts(with: security.remote.der) else {
                            throw fail(.securityCheckFailed("OpenSecureChannel answered with a certificate other than the endpoint's"), op)
                        }
                        guard thumbprint == security.local.thumbprint else {
                            throw fail(.securityCheckFailed("OpenSecureChannel answered for a certificate other than ours (receiver thumbprint)"), op)
                        }
                        body = try unprotect(header, chunkBody, at: r.position, token: nil, op)
                        r = UABinaryReader(body, limits: decodingLimits)
                    }
                } else {
                    guard channel == channelId else { throw fail(.protocolViolation("channel id \(channel), ours is \(channelId)"), op) }
                    let token = try r.readUInt32("TokenId")
                    guard token == tokenId || token == previousTokenId else {
                        throw fail(.protocolViolation("unknown security token \(token)"), op)
                    }
                    if security != nil {
                        body = try unprotect(header, chunkBody, at: r.position, token: token, op)
                        r = UABinaryReader(body, limits: decodingLimits)
                        if token == tokenId, let previous = previousTokenId {
                            // The server uses the new token: the old one's keys are done with.
                            tokenKeys[previous] = nil
                            previousTokenId = nil
                        }
                    }
                }
                let sequence = try r.readUInt32("SequenceNumber")
                let rid = try r.readUInt32("RequestId")
                try checkSequence(sequence, op)
                if header.chunk == UInt8(ascii: "A") {
                    let e = try UATCPErrorBody(decoding: &r)
                    guard rid == requestId else { throw fail(.protocolViolation("abort for request \(rid), waiting for \(requestId)"), op) }
                    throw error(.aborted(e.status, reason: e.reason), op)
                }
                guard rid == requestId else {
                    throw fail(.protocolViolation("response to request \(rid), waiting for \(requestId)"), op)
                }
                chunks += 1
                if chunks > Int(limits.maxChunkCount) {
                    throw fail(.limitExceeded("response in more than \(limits.maxChunkCount) chunks"), op)
                }
                if message.count + r.remaining > Int(limits.maxMessageSize) {
                    throw fail(.limitExceeded("response over \(limits.maxMessageSize) bytes"), op)
                }
                message.append(contentsOf: body[r.position...])
            }
            if header.chunk == UInt8(ascii: "F") { return UABinaryReader(message, limits: decodingLimits) }
        }
    }

    // MARK: signing and encryption

    /// How our chunks of `type` are protected.
    private func sendProtection(_ type: UATCPMessageType) -> UAChunkProtection {
        guard let security else { return UAChunkProtection(signatureSize: 0, encrypted: false, plainBlock: 1, cipherBlock: 1, extraPaddingByte: false) }
        if type == .open {
            let k = security.remote.keyBytes
            return UAChunkProtection(signatureSize: security.local.keyBytes, encrypted: true, plainBlock: k - UACrypto.oaepSHA1Overhead,
                                     cipherBlock: k, extraPaddingByte: k > 256)
        }
        return UAChunkProtection(signatureSize: UACrypto.symmetricSignatureSize, encrypted: security.mode == .signAndEncrypt,
                                 plainBlock: UACrypto.symmetricBlockSize, cipherBlock: UACrypto.symmetricBlockSize, extraPaddingByte: false)
    }

    /// How the server's chunks of `type` are protected.
    private func receiveProtection(_ type: UATCPMessageType, _ security: UAChannelSecurity) -> UAChunkProtection {
        if type == .open {
            let k = security.local.keyBytes
            return UAChunkProtection(signatureSize: security.remote.keyBytes, encrypted: true, plainBlock: k - UACrypto.oaepSHA1Overhead,
                                     cipherBlock: k, extraPaddingByte: k > 256)
        }
        return sendProtection(type)
    }

    /// Signs `head` + `plain` (sequence header, body, padding) and encrypts `plain` + signature
    /// where the mode asks; returns what follows `head` on the wire.
    private func protect(_ type: UATCPMessageType, head: [UInt8], plain: [UInt8], _ protection: UAChunkProtection, _ op: String) throws(OPCUAError) -> [UInt8] {
        guard let security else { return plain }
        do {
            if type == .open {
                let signature = try UACrypto.rsaSign(head + plain, with: security.local.signingKey)
                return try UACrypto.rsaEncrypt(plain + signature, with: security.remote.encryptionKey)
            }
            guard let keys = tokenKeys[tokenId]?.client else { throw UASecurityFault("no keys for security token \(tokenId)") }
            let signature = UACrypto.hmac(head + plain, key: keys.signingKey)
            guard protection.encrypted else { return plain + signature }
            return try UACrypto.aesCBC(encrypt: true, plain + signature, key: keys.encryptingKey, iv: keys.iv)
        } catch {
            throw fail(.securityCheckFailed("signing or encrypting a \(type.rawValue) chunk failed: \(error)"), op)
        }
    }

    /// Decrypts (where encrypted) and verifies one received chunk whose security header ends at
    /// `offset` of `body` (the chunk after its 8-byte header); returns the plaintext from the
    /// sequence header on, padding and signature removed. `token` nil: asymmetric (OPN).
    private func unprotect(_ header: UATCPHeader, _ body: [UInt8], at offset: Int, token: UInt32?, _ op: String) throws(OPCUAError) -> [UInt8] {
        guard let security else { return Array(body[offset...]) }
        let protection = receiveProtection(header.type, security)
        let what = "\(header.type.rawValue) chunk" + (token.map { " (token \($0))" } ?? "")
        var head = UABinaryWriter(capacity: UATCPHeader.size + offset)
        header.write(into: &head)
        head.writeBytes(Array(body[..<offset]))
        let sealed = body[offset...]
        var plain: [UInt8]
        do {
            if protection.encrypted {
                guard !sealed.isEmpty, sealed.count % protection.cipherBlock == 0 else {
                    throw UASecurityFault("encrypted part of \(sealed.count) bytes is not a whole number of \(protection.cipherBlock)-byte blocks")
                }
                if let token {
                    guard let keys = tokenKeys[token]?.server else { throw UASecurityFault("no keys for security token \(token)") }
                    plain = try UACrypto.aesCBC(encrypt: false, Array(sealed), key: keys.encryptingKey, iv: keys.iv)
                } else {
                    plain = try UACrypto.rsaDecrypt(sealed, with: security.local.decryptionKey)
                }
            } else {
                plain = Array(sealed)
            }
        } catch {
            throw fail(.securityCheckFailed("\(what) does not decrypt: \(error)"), op)
        }
        guard plain.count >= protection.signatureSize + 8 else {
            throw fail(.securityCheckFailed("\(what) of \(plain.count) bytes has no room for its \(protection.signatureSize)-byte signature"), op)
        }
        let signature = Array(plain[(plain.count - protection.signatureSize)...])
        plain.removeLast(protection.signatureSize)
        let signed = head.bytes + plain
        let valid: Bool
        if let token {
            guard let keys = tokenKeys[token]?.server else { throw fail(.securityCheckFailed("no keys for security token \(token)"), op) }
            valid = HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: signed, using: keys.signingKey)
        } else {
            valid = UACrypto.rsaVerify(signature, signed, with: security.remote.verifyKey)
        }
        guard valid else { throw fail(.securityCheckFailed("the signature of a \(what) from the server does not verify"), op) }
        do { return try protection.stripPadding(plain) } catch {
            throw fail(.securityCheckFailed("\(what): \(error)"), op)
        }
    }

    /// Each chunk's sequence number is the previous one plus one (wrapping below 1024 once it
    /// passes 4294966271, as Part 6 allows).
    private func checkSequence(_ s: UInt32, _ op: String) throws(OPCUAError) {
        defer { lastReceivedSequence = s }
        guard let last = lastReceivedSequence else { return }
        if s == last &+ 1 { return }
        if last > 4_294_966_271 && s < 1024 { return }
        throw fail(.protocolViolation("sequence number \(s) after \(last)"), op)
    }
}

/// What a secured channel needs: policy, mode, our identity and the server's certificate.
struct UAChannelSecurity: @unchecked Sendable {
    let policyUri: String
    let mode: MessageSecurityMode
    let local: UALocalIdentity
    let remote: UARemoteCertificate
}

/// The header of every response.
struct ResponseHeader {
    var timestamp: UADateTime
    var requestHandle: UInt32
    var serviceResult: StatusCode

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        timestamp = try r.readDateTime("ResponseHeader.Timestamp")
        requestHandle = try r.readUInt32("ResponseHeader.RequestHandle")
        serviceResult = try r.readStatusCode("ResponseHeader.ServiceResult")
        try r.skipDiagnosticInfo("ResponseHeader.ServiceDiagnostics")
        _ = try r.readArray("ResponseHeader.StringTable", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
            try e.readString("ResponseHeader.StringTable")
        }
        _ = try r.readExtensionObject("ResponseHeader.AdditionalHeader")
    }
}
