import Platform

/// Who the client logs in as.
public enum UserIdentity: Sendable, Hashable {
    case anonymous
    /// A user name and password. Never sent in the clear where the server offers encryption:
    /// encrypted with the server's key where its user token policy asks for it, in the clear
    /// only inside a SignAndEncrypt channel or to a server that offers no encryption at all.
    case userName(String, password: [UInt8])
}

/// How an `OPCUAClient` connects, and the limits it enforces.
public struct OPCUAClientOptions: Sendable, Hashable {
    /// Deadline for each request, and for connecting, ms.
    public var timeoutMs: Int = 5000
    public var tcpLimits = UATCPLimits()
    public var decodingLimits = UAEncodingLimits()
    /// Security token lifetime asked for, ms (renewed at 75 %).
    public var secureChannelLifetimeMs: UInt32 = 600_000
    /// Session timeout asked for, ms.
    public var sessionTimeoutMs: Double = 60_000
    public var identity: UserIdentity = .anonymous
    /// The application URI; with security on, the one in the certificate's subjectAltName wins.
    public var applicationUri = "urn:tibet-twin:client"
    public var applicationName = "tibet-twin"
    /// Security policy and mode, certificate, key and trust directory (default: None).
    public var security: OPCUASecurity = .none

    public init() {}
}

/// An OPC UA client over UA-TCP, security policy None or Basic256Sha256 (Sign, SignAndEncrypt):
/// one secure channel and one session,
/// used by one thread at a time (each call blocks that thread until its answer or the
/// deadline; never call it from the Swift cooperative pool). Read, Browse and GetEndpoints.
///
/// Any transport or protocol failure closes the channel; the client then throws
/// `channelClosed` until `connect()` is called again.
public final class OPCUAClient: @unchecked Sendable {
    public let endpoint: UAEndpointURL
    public let options: OPCUAClientOptions
    /// Written only by the thread using the client, under `channelLock` (read by `interrupt()`).
    private var channel: UASecureChannel?
    private let channelLock = MonotonicCondition()
    private var authenticationToken: NodeId = .null
    private var cachedNamespaces: [String]?
    /// The nonce of the server's last CreateSession answer (a password is encrypted with it).
    private var sessionServerNonce: [UInt8] = []
    private var sessionServerCertificate: [UInt8] = []
    /// The endpoints the server listed in CreateSession.
    public private(set) var serverEndpoints: [EndpointDescription] = []
    /// The session timeout the server granted, ms.
    public private(set) var revisedSessionTimeoutMs: Double = 0

    public init(endpoint: String, options: OPCUAClientOptions = OPCUAClientOptions()) throws(OPCUAError) {
        self.endpoint = try UAEndpointURL(parsing: endpoint)
        self.options = options
    }

    deinit { channel?.close() }

    /// Whether the channel is open and a session active.
    public var isConnected: Bool { channel?.isOpen == true && !authenticationToken.isNull }

    /// How often the secure channel's token has been renewed.
    public var channelRenewals: Int { channel?.renewals ?? 0 }

    /// The secure channel's current token id (changes on each renewal).
    public var channelTokenId: UInt32 { channel?.tokenId ?? 0 }

    /// The token lifetime the server granted, ms.
    public var channelLifetimeMs: UInt32 { channel?.revisedLifetimeMs ?? 0 }

    // MARK: connect, disconnect

    /// Opens the secure channel, creates and activates a session.
    ///
    /// With `options.security` on: asks the server for its endpoints (GetEndpoints over a
    /// channel without security), takes the one with the policy and mode asked for, checks its
    /// certificate against the trust directory (validity, application URI), then opens the
    /// secured channel and signs the session with our certificate. A password is never sent in
    /// the clear to a server that offers encryption.
    public func connect() throws(OPCUAError) {
        disconnect()
        let security = try prepareSecurity()
        let ch = try openChannel(security)
        channelLock.withLock { channel = ch }
        do {
            try createSession(ch)
            try activateSession(ch)
        } catch {
            ch.close()
            channelLock.withLock { channel = nil }
            authenticationToken = .null
            throw error
        }
    }

    /// Closes the session and the secure channel (best effort: errors are ignored).
    public func disconnect() {
        guard let ch = channel else { return }
        if ch.isOpen && !authenticationToken.isNull {
            _ = try? call(ch, "CloseSession", ServiceId.closeSessionRequest, ServiceId.closeSessionResponse, timeoutMs: min(options.timeoutMs, 2000)) { w in
                w.writeBool(true)  // DeleteSubscriptions
            } decode: { (_: inout UABinaryReader) throws(UADecodingError) in () }
        }
        ch.close()
        channelLock.withLock { channel = nil }
        authenticationToken = .null
        cachedNamespaces = nil
    }

    /// Interrupts a call blocked on another thread (it fails, the channel closes). The one
    /// method another thread may call.
    public func interrupt() { channelLock.withLock { channel?.interrupt() } }

    private func openChannel(_ security: UAChannelSecurity? = nil) throws(OPCUAError) -> UASecureChannel {
        let ch = UASecureChannel(endpoint: endpoint, limits: options.tcpLimits, decodingLimits: options.decodingLimits,
                                 requestedLifetimeMs: options.secureChannelLifetimeMs, security: security)
        do { try ch.open(timeoutMs: options.timeoutMs) } catch { throw explainCertificateRefusal(error) }
        return ch
    }

    /// Nil for policy None; else our identity and the server's checked certificate.
    private func prepareSecurity() throws(OPCUAError) -> UAChannelSecurity? {
        let s = options.security
        guard s.isSecured else { return nil }
        if let problem = s.problem { throw OPCUAError(.refused(problem), operation: "connect", endpoint: endpoint.text) }
        guard let certPath = s.certificatePath, let keyPath = s.privateKeyPath, let trustDir = s.trustDirectory else { return nil }
        let local = try UALocalIdentity.load(certificatePath: certPath, privateKeyPath: keyPath)
        var plain = options
        plain.security = .none
        let endpoints = try Self.getEndpoints(endpoint: endpoint.text, options: plain)
        let mode = s.mode.messageSecurityMode
        guard let chosen = endpoints.first(where: { $0.securityPolicyUri == s.policy.uri && $0.securityMode == mode }) else {
            let offered = endpoints.map { "\($0.securityPolicyName)/\($0.securityMode?.name ?? "?")" }
            throw OPCUAError(.refused("the server offers no \(s.policy.rawValue)/\(s.mode.rawValue) endpoint; it offers "
                + (offered.isEmpty ? "none" : offered.joined(separator: ", "))), operation: "GetEndpoints", endpoint: endpoint.text)
        }
        guard let der = chosen.serverCertificate, !der.isEmpty else {
            throw OPCUAError(.securityCheckFailed("the server's \(s.policy.rawValue) endpoint carries no certificate"), operation: "GetEndpoints", endpoint: endpoint.text)
        }
        let remote: UARemoteCertificate
        do { remote = try UARemoteCertificate(der: der) } catch {
            throw OPCUAError(.securityCheckFailed(error.description), operation: "check server certificate", endpoint: endpoint.text)
        }
        do { try UATrustStore.check(remote, serverApplicationUri: chosen.server.applicationUri, directory: trustDir) } catch {
            throw OPCUAError(error.kind, operation: error.operation, endpoint: endpoint.text)
        }
        return UAChannelSecurity(policyUri: s.policy.uri, mode: mode, local: local, remote: remote)
    }

    /// A Bad certificate status from the server (BadCertificate…, BadSecurityChecksFailed) means
    /// it refused our certificate: say so, and what to do.
    private func explainCertificateRefusal(_ e: OPCUAError) -> OPCUAError {
        guard options.security.isSecured, let code = e.statusCode, (0x8012_0000...0x801A_0000).contains(code.rawValue & 0xFFFF_0000) else { return e }
        let cert = options.security.certificatePath ?? "the client certificate"
        let what = code.rawValue & 0xFFFF_0000 == 0x8013_0000
            ? "the server's security checks failed (\(code)); most often the server does not trust our certificate"
            : "the server refused our certificate (\(code))"
        return OPCUAError(.securityCheckFailed(what + ": have the server trust \(cert) "
            + "(copy it into the server's trusted certificates, or accept it there), and check that its application URI and validity suit the server"),
            operation: e.operation, endpoint: e.endpoint)
    }

    /// The endpoints a server offers (GetEndpoints over a channel of its own, no session).
    public static func getEndpoints(endpoint: String, options: OPCUAClientOptions = OPCUAClientOptions()) throws(OPCUAError) -> [EndpointDescription] {
        let client = try OPCUAClient(endpoint: endpoint, options: options)
        let ch = try client.openChannel()
        defer { ch.close() }
        return try client.call(ch, "GetEndpoints", ServiceId.getEndpointsRequest, ServiceId.getEndpointsResponse, timeoutMs: options.timeoutMs) { w in
            w.writeString(endpoint)
            w.writeArray([String]()) { $0.writeString($1) }  // LocaleIds
            w.writeArray([String]()) { $0.writeString($1) }  // ProfileUris
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            try r.readArray("GetEndpointsResponse.Endpoints", minElementBytes: 30) { (e: inout UABinaryReader) throws(UADecodingError) in
                try EndpointDescription(decoding: &e)
            }
        }
    }

    private func createSession(_ ch: UASecureChannel) throws(OPCUAError) {
        let security = ch.security
        let client = ApplicationDescription(applicationUri: security?.local.applicationUri ?? options.applicationUri, productUri: "urn:tibet-twin",
                                            applicationName: options.applicationName, applicationType: 1)
        let nonce = UACrypto.random(UACrypto.nonceLength)
        let answer: CreateSessionAnswer
        do {
            answer = try call(ch, "CreateSession", ServiceId.createSessionRequest, ServiceId.createSessionResponse, timeoutMs: options.timeoutMs) { w in
                client.encode(&w)
                w.writeString(nil)  // ServerUri
                w.writeString(endpoint.text)
                w.writeString("tibet-twin session")
                w.writeByteString(nonce)
                w.writeByteString(security?.local.certificateDER)  // ClientCertificate
                w.writeDouble(options.sessionTimeoutMs)
                w.writeUInt32(options.tcpLimits.maxMessageSize)  // MaxResponseMessageSize
            } decode: { (r: inout UABinaryReader) throws(UADecodingError) in try CreateSessionAnswer(decoding: &r) }
        } catch {
            throw explainCertificateRefusal(error)
        }
        let (token, timeout, endpoints) = (answer.authenticationToken, answer.revisedSessionTimeoutMs, answer.endpoints)
        let (serverNonce, serverCertificate, algorithm, signature) = (answer.serverNonce, answer.serverCertificate, answer.signatureAlgorithm, answer.signature)
        if let security {
            // The server proves it holds the key of the certificate we checked: it signs our
            // certificate and nonce.
            guard serverCertificate.starts(with: security.remote.der) else {
                throw ch.fail(.securityCheckFailed("CreateSession answered with a certificate other than the endpoint's"), "CreateSession")
            }
            guard serverNonce.count >= UACrypto.nonceLength else {
                throw ch.fail(.securityCheckFailed("the server's session nonce has \(serverNonce.count) bytes, at least \(UACrypto.nonceLength) are needed"), "CreateSession")
            }
            guard algorithm == UACrypto.rsaSHA256SignatureUri,
                  UACrypto.rsaVerify(signature, security.local.certificateDER + nonce, with: security.remote.verifyKey) else {
                throw ch.fail(.securityCheckFailed("the server's CreateSession signature (\(algorithm ?? "no algorithm")) does not verify with its certificate"), "CreateSession")
            }
        }
        sessionServerNonce = serverNonce
        sessionServerCertificate = serverCertificate
        guard !token.isNull else { throw ch.fail(.protocolViolation("CreateSession returned a null authentication token"), "CreateSession") }
        authenticationToken = token
        revisedSessionTimeoutMs = timeout
        serverEndpoints = endpoints
    }

    /// The user token policy to log in with, from the endpoints of the channel's policy and mode,
    /// and the certificate to encrypt a password with (nil: the password travels as it is).
    /// Refuses a password that would travel in the clear where the server offers encryption.
    private func userTokenPolicy(_ ch: UASecureChannel) throws(OPCUAError) -> (UserTokenPolicy, encryptFor: UARemoteCertificate?) {
        let channelPolicy = ch.security?.policyUri ?? UASecureChannel.policyNone
        let channelMode = ch.security?.mode ?? MessageSecurityMode.none
        let matching = serverEndpoints.filter { $0.securityMode == channelMode && ($0.securityPolicyUri ?? UASecureChannel.policyNone) == channelPolicy }
        let wanted: UserTokenType
        switch options.identity {
        case .anonymous: wanted = .anonymous
        case .userName: wanted = .userName
        }
        let policies = matching.flatMap(\.userIdentityTokens).filter { $0.tokenType == wanted }
        guard let policy = policies.first else {
            let what = wanted == .anonymous ? "anonymous login" : "user name login"
            throw OPCUAError(.refused("the server offers no \(what) on a \(ch.security == nil ? "security-None" : "\(options.security.policy.rawValue)/\(channelMode.name)") endpoint"),
                             operation: "ActivateSession", endpoint: endpoint.text)
        }
        guard wanted == .userName else { return (policy, nil) }
        let tokenPolicy = (policy.securityPolicyUri ?? "").isEmpty ? channelPolicy : policy.securityPolicyUri!
        if tokenPolicy == UASecureChannel.policyNone {
            if channelMode == .signAndEncrypt { return (policy, nil) }
            if serverEndpoints.contains(where: \.isSecured) {
                throw OPCUAError(.refused("the server offers encrypted endpoints; the password is not sent unencrypted "
                    + "(connect with security Basic256Sha256 and mode SignAndEncrypt, or Sign where the server encrypts the password)"),
                    operation: "ActivateSession", endpoint: endpoint.text)
            }
            return (policy, nil)
        }
        guard tokenPolicy == OPCUASecurity.Policy.basic256Sha256.uri, let remote = ch.security?.remote else {
            throw OPCUAError(.refused("the server wants the password encrypted with \(tokenPolicy), which this client does not do on this channel "
                + "(it encrypts with Basic256Sha256 on a Basic256Sha256 channel); it is not sent unencrypted"), operation: "ActivateSession", endpoint: endpoint.text)
        }
        return (policy, remote)
    }

    private func activateSession(_ ch: UASecureChannel) throws(OPCUAError) {
        let (policy, encryptFor) = try userTokenPolicy(ch)
        let identity = options.identity
        var clientSignature: [UInt8]?
        if let security = ch.security {
            do { clientSignature = try UACrypto.rsaSign(sessionServerCertificate + sessionServerNonce, with: security.local.signingKey) } catch {
                throw ch.fail(.securityCheckFailed("signing ActivateSession failed: \(error)"), "ActivateSession")
            }
        }
        var secret: [UInt8] = []
        if case .userName(_, let password) = identity {
            secret = password
            if let encryptFor {
                var plain = UABinaryWriter()
                plain.writeUInt32(UInt32(password.count + sessionServerNonce.count))
                plain.writeBytes(password)
                plain.writeBytes(sessionServerNonce)
                do { secret = try UACrypto.rsaEncrypt(plain.bytes, with: encryptFor.encryptionKey) } catch {
                    throw ch.fail(.securityCheckFailed("encrypting the password failed: \(error)"), "ActivateSession")
                }
            }
        }
        try call(ch, "ActivateSession", ServiceId.activateSessionRequest, ServiceId.activateSessionResponse, timeoutMs: options.timeoutMs) { w in
            w.writeString(clientSignature == nil ? nil : UACrypto.rsaSHA256SignatureUri)
            w.writeByteString(clientSignature)  // ClientSignature
            w.writeArray([UInt8]()) { _, _ in }  // ClientSoftwareCertificates
            w.writeArray(["en"]) { $0.writeString($1) }  // LocaleIds
            switch identity {
            case .anonymous:
                w.writeExtensionObject(typeId: .numeric(ServiceId.anonymousIdentityToken)) { $0.writeString(policy.policyId) }
            case .userName(let user, _):
                w.writeExtensionObject(typeId: .numeric(ServiceId.userNameIdentityToken)) { t in
                    t.writeString(policy.policyId)
                    t.writeString(user)
                    t.writeByteString(secret)
                    t.writeString(encryptFor == nil ? nil : UACrypto.rsaOAEPUri)  // EncryptionAlgorithm
                }
            }
            w.writeString(nil); w.writeByteString(nil)  // UserTokenSignature
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            _ = try r.readByteString("ActivateSessionResponse.ServerNonce")
            _ = try r.readArray("ActivateSessionResponse.Results", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
                try e.readStatusCode("ActivateSessionResponse.Results")
            }
            try r.skipDiagnosticInfos("ActivateSessionResponse.DiagnosticInfos")
        }
    }

    // MARK: services

    /// Sends one request with the session's header and decodes its response: a ServiceFault or
    /// a Bad ServiceResult throws `serviceFault` (the channel stays open); a response of the
    /// wrong type, or one that does not decode to its last byte, closes the channel.
    @discardableResult
    func call<T>(_ ch: UASecureChannel, _ service: String, _ requestId: UInt32, _ responseId: UInt32, timeoutMs: Int,
                 encode: (inout UABinaryWriter) -> Void,
                 decode: (inout UABinaryReader) throws(UADecodingError) -> T) throws(OPCUAError) -> T {
        var w = UABinaryWriter()
        w.writeNodeId(.numeric(requestId))
        ch.writeRequestHeader(&w, authenticationToken: authenticationToken, timeoutHint: UInt32(clamping: timeoutMs))
        encode(&w)
        var (typeId, r) = try ch.call(service, body: w.bytes, timeoutMs: timeoutMs)
        return try ch.closingOnFailure(service) {
            if typeId == .numeric(ServiceId.serviceFault) {
                let h = try ResponseHeader(decoding: &r)
                throw OPCUAError(.serviceFault(h.serviceResult.isGood ? .bad : h.serviceResult), operation: service, endpoint: endpoint.text)
            }
            guard typeId == .numeric(responseId) else {
                throw ch.fail(.protocolViolation("expected \(service)Response (i=\(responseId)), got \(typeId)"), service)
            }
            let h = try ResponseHeader(decoding: &r)
            if h.serviceResult.isBad {
                throw OPCUAError(.serviceFault(h.serviceResult), operation: service, endpoint: endpoint.text)
            }
            let result = try decode(&r)
            try r.expectEnd("\(service)Response")
            return result
        }
    }

    func session(_ service: String) throws(OPCUAError) -> UASecureChannel {
        guard let ch = channel, !authenticationToken.isNull else {
            throw OPCUAError(.channelClosed, operation: service, endpoint: endpoint.text)
        }
        return ch
    }

    /// Reads attributes: one DataValue per item, in order, each with its own StatusCode and the
    /// timestamps asked for. `maxAge` 0 asks the server for a fresh value.
    public func read(_ items: [ReadValueId], timestamps: TimestampsToReturn = .both, maxAgeMs: Double = 0) throws(OPCUAError) -> [DataValue] {
        let ch = try session("Read")
        let results = try call(ch, "Read", ServiceId.readRequest, ServiceId.readResponse, timeoutMs: options.timeoutMs) { w in
            w.writeDouble(maxAgeMs)
            w.writeUInt32(timestamps.rawValue)
            w.writeArray(items) { $1.encode(&$0) }
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            let values = try r.readArray("ReadResponse.Results") { (e: inout UABinaryReader) throws(UADecodingError) in
                try e.readDataValue("ReadResponse.Results")
            }
            try r.skipDiagnosticInfos("ReadResponse.DiagnosticInfos")
            return values
        }
        guard results.count == items.count else {
            throw ch.fail(.protocolViolation("Read of \(items.count) items answered with \(results.count) results"), "Read")
        }
        return results
    }

    /// Reads the Value attribute of each node.
    public func readValues(_ nodes: [NodeId]) throws(OPCUAError) -> [DataValue] {
        try read(nodes.map { ReadValueId($0) })
    }

    /// Every forward hierarchical reference of `node` (following continuation points with
    /// BrowseNext). A Bad StatusCode for the node throws `serviceFault` with that code.
    public func browse(_ node: NodeId, maxReferencesPerCall: UInt32 = 1000) throws(OPCUAError) -> [ReferenceDescription] {
        let ch = try session("Browse")
        var result = try call(ch, "Browse", ServiceId.browseRequest, ServiceId.browseResponse, timeoutMs: options.timeoutMs) { w in
            w.writeNodeId(.null); w.writeDateTime(.null); w.writeUInt32(0)  // View: the whole address space
            w.writeUInt32(maxReferencesPerCall)
            w.writeInt32(1)  // one BrowseDescription
            w.writeNodeId(node)
            w.writeUInt32(0)  // BrowseDirection Forward
            w.writeNodeId(.numeric(33))  // HierarchicalReferences
            w.writeBool(true)  // IncludeSubtypes
            w.writeUInt32(0)  // NodeClassMask: all
            w.writeUInt32(0x3F)  // ResultMask: all fields
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in try Self.decodeBrowseResults(&r, "BrowseResponse") }
        var references: [ReferenceDescription] = []
        var rounds = 0
        while true {
            guard !result.status.isBad else {
                throw OPCUAError(.serviceFault(result.status), operation: "Browse \(node)", endpoint: endpoint.text)
            }
            references += result.references
            guard let cp = result.continuationPoint, !cp.isEmpty else { return references }
            rounds += 1
            if references.count > options.decodingLimits.maxArrayLength || rounds > 10_000 {
                _ = try? browseNext(ch, cp, release: true)
                throw OPCUAError(.limitExceeded("\(node) has more than \(options.decodingLimits.maxArrayLength) references"), operation: "Browse", endpoint: endpoint.text)
            }
            result = try browseNext(ch, cp, release: false)
        }
    }

    private func browseNext(_ ch: UASecureChannel, _ continuationPoint: [UInt8], release: Bool) throws(OPCUAError) -> BrowseResult {
        try call(ch, "BrowseNext", ServiceId.browseNextRequest, ServiceId.browseNextResponse, timeoutMs: options.timeoutMs) { w in
            w.writeBool(release)
            w.writeArray([continuationPoint]) { $0.writeByteString($1) }
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in try Self.decodeBrowseResults(&r, "BrowseNextResponse") }
    }

    private static func decodeBrowseResults(_ r: inout UABinaryReader, _ field: String) throws(UADecodingError) -> BrowseResult {
        let start = r.position
        let results = try r.readArray(field + ".Results", minElementBytes: 12) { (e: inout UABinaryReader) throws(UADecodingError) in
            try BrowseResult(decoding: &e)
        }
        try r.skipDiagnosticInfos(field + ".DiagnosticInfos")
        guard results.count == 1 else { throw r.invalid("\(results.count) results for one node", at: start, field) }
        return results[0]
    }

    /// The server's namespace array (read once per session): index → URI.
    public func namespaces() throws(OPCUAError) -> [String] {
        if let cachedNamespaces { return cachedNamespaces }
        let dv = try readValues([.numeric(2255)])[0]
        guard dv.status.isGood, case .array(.string, let elements, _) = dv.value else {
            throw OPCUAError(.protocolViolation("the server's NamespaceArray is not a string array (\(dv.status))"), operation: "Read NamespaceArray", endpoint: endpoint.text)
        }
        let uris = elements.map { if case .string(let s) = $0 { return s ?? "" } else { return "" } }
        cachedNamespaces = uris
        return uris
    }

    /// The NodeId for a text form: an `nsu=` URI is looked up in the server's namespace array.
    public func resolve(_ text: NodeIdText) throws(OPCUAError) -> NodeId {
        guard let uri = text.namespaceUri else { return text.nodeId }
        let uris = try namespaces()
        guard let index = uris.firstIndex(of: uri), index <= Int(UInt16.max) else {
            throw OPCUAError(.serviceFault(.badNodeIdUnknown), operation: "resolve \(text): namespace \(uri) is not on the server", endpoint: endpoint.text)
        }
        var id = text.nodeId
        id.namespace = UInt16(index)
        return id
    }
}

/// The CreateSession response fields this client uses.
private struct CreateSessionAnswer {
    var authenticationToken: NodeId
    var revisedSessionTimeoutMs: Double
    var serverNonce: [UInt8]
    var serverCertificate: [UInt8]
    var endpoints: [EndpointDescription]
    var signatureAlgorithm: String?
    var signature: [UInt8]

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        _ = try r.readNodeId("CreateSessionResponse.SessionId")
        authenticationToken = try r.readNodeId("CreateSessionResponse.AuthenticationToken")
        revisedSessionTimeoutMs = try r.readDouble("CreateSessionResponse.RevisedSessionTimeout")
        serverNonce = try r.readByteString("CreateSessionResponse.ServerNonce") ?? []
        serverCertificate = try r.readByteString("CreateSessionResponse.ServerCertificate") ?? []
        endpoints = try r.readArray("CreateSessionResponse.ServerEndpoints", minElementBytes: 30) { (e: inout UABinaryReader) throws(UADecodingError) in
            try EndpointDescription(decoding: &e)
        }
        _ = try r.readArray("CreateSessionResponse.ServerSoftwareCertificates", minElementBytes: 8) { (e: inout UABinaryReader) throws(UADecodingError) in
            _ = try e.readByteString("SignedSoftwareCertificate.CertificateData")
            _ = try e.readByteString("SignedSoftwareCertificate.Signature")
        }
        signatureAlgorithm = try r.readString("CreateSessionResponse.ServerSignature.Algorithm")
        signature = try r.readByteString("CreateSessionResponse.ServerSignature.Signature") ?? []
        _ = try r.readUInt32("CreateSessionResponse.MaxRequestMessageSize")
    }
}
