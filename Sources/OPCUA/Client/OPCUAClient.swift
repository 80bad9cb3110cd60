import Platform

/// Who the client logs in as.
public enum UserIdentity: Sendable, Hashable {
    case anonymous
    /// A user name and password. Sent only where no encryption is on offer at all (see
    /// `OPCUAClient.connect`): this client does not speak an encrypting policy yet.
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
    public var applicationUri = "urn:tibet-twin:client"
    public var applicationName = "tibet-twin"

    public init() {}
}

/// An OPC UA client over UA-TCP with security policy None: one secure channel and one session,
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
    /// A user name and password are sent only when none of the server's endpoints offers
    /// encryption and the user token policy asks for none: this client speaks security policy
    /// None only, and refuses to send a password in the clear to a server that could protect it.
    public func connect() throws(OPCUAError) {
        disconnect()
        let ch = try openChannel()
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

    private func openChannel() throws(OPCUAError) -> UASecureChannel {
        let ch = UASecureChannel(endpoint: endpoint, limits: options.tcpLimits, decodingLimits: options.decodingLimits,
                                 requestedLifetimeMs: options.secureChannelLifetimeMs)
        try ch.open(timeoutMs: options.timeoutMs)
        return ch
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
        let client = ApplicationDescription(applicationUri: options.applicationUri, productUri: "urn:tibet-twin",
                                            applicationName: options.applicationName, applicationType: 1)
        let nonce = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let (sessionId, token, timeout, endpoints) = try call(ch, "CreateSession", ServiceId.createSessionRequest, ServiceId.createSessionResponse, timeoutMs: options.timeoutMs) { w in
            client.encode(&w)
            w.writeString(nil)  // ServerUri
            w.writeString(endpoint.text)
            w.writeString("tibet-twin session")
            w.writeByteString(nonce)
            w.writeByteString(nil)  // ClientCertificate
            w.writeDouble(options.sessionTimeoutMs)
            w.writeUInt32(options.tcpLimits.maxMessageSize)  // MaxResponseMessageSize
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            let sessionId = try r.readNodeId("CreateSessionResponse.SessionId")
            let token = try r.readNodeId("CreateSessionResponse.AuthenticationToken")
            let timeout = try r.readDouble("CreateSessionResponse.RevisedSessionTimeout")
            _ = try r.readByteString("CreateSessionResponse.ServerNonce")
            _ = try r.readByteString("CreateSessionResponse.ServerCertificate")
            let endpoints = try r.readArray("CreateSessionResponse.ServerEndpoints", minElementBytes: 30) { (e: inout UABinaryReader) throws(UADecodingError) in
                try EndpointDescription(decoding: &e)
            }
            _ = try r.readArray("CreateSessionResponse.ServerSoftwareCertificates", minElementBytes: 8) { (e: inout UABinaryReader) throws(UADecodingError) in
                _ = try e.readByteString("SignedSoftwareCertificate.CertificateData")
                _ = try e.readByteString("SignedSoftwareCertificate.Signature")
            }
            _ = try r.readString("CreateSessionResponse.ServerSignature.Algorithm")
            _ = try r.readByteString("CreateSessionResponse.ServerSignature.Signature")
            _ = try r.readUInt32("CreateSessionResponse.MaxRequestMessageSize")
            return (sessionId, token, timeout, endpoints)
        }
        _ = sessionId
        guard !token.isNull else { throw ch.fail(.protocolViolation("CreateSession returned a null authentication token"), "CreateSession") }
        authenticationToken = token
        revisedSessionTimeoutMs = timeout
        serverEndpoints = endpoints
    }

    /// The user token policy to log in with, on a None endpoint; refuses a password that would
    /// travel unencrypted where the server offers encryption.
    private func userTokenPolicy() throws(OPCUAError) -> UserTokenPolicy {
        let noneEndpoints = serverEndpoints.filter { $0.securityMode == MessageSecurityMode.none }
        let wanted: UserTokenType
        switch options.identity {
        case .anonymous: wanted = .anonymous
        case .userName: wanted = .userName
        }
        let policies = noneEndpoints.flatMap(\.userIdentityTokens).filter { $0.tokenType == wanted }
        guard let policy = policies.first else {
            let what = wanted == .anonymous ? "anonymous login" : "user name login"
            throw OPCUAError(.refused("the server offers no \(what) on a security-None endpoint"), operation: "ActivateSession", endpoint: endpoint.text)
        }
        if wanted == .userName {
            if serverEndpoints.contains(where: \.isSecured) {
                throw OPCUAError(.refused("the server offers encrypted endpoints; the password is not sent unencrypted "
                    + "(this client speaks security policy None only so far)"), operation: "ActivateSession", endpoint: endpoint.text)
            }
            if let uri = policy.securityPolicyUri, !uri.isEmpty, uri != UASecureChannel.policyNone {
                throw OPCUAError(.refused("the server wants the password encrypted with \(uri), which this client does not speak yet; "
                    + "it is not sent unencrypted"), operation: "ActivateSession", endpoint: endpoint.text)
            }
        }
        return policy
    }

    private func activateSession(_ ch: UASecureChannel) throws(OPCUAError) {
        let policy = try userTokenPolicy()
        let identity = options.identity
        try call(ch, "ActivateSession", ServiceId.activateSessionRequest, ServiceId.activateSessionResponse, timeoutMs: options.timeoutMs) { w in
            w.writeString(nil); w.writeByteString(nil)  // ClientSignature
            w.writeArray([UInt8]()) { _, _ in }  // ClientSoftwareCertificates
            w.writeArray(["en"]) { $0.writeString($1) }  // LocaleIds
            switch identity {
            case .anonymous:
                w.writeExtensionObject(typeId: .numeric(ServiceId.anonymousIdentityToken)) { $0.writeString(policy.policyId) }
            case .userName(let user, let password):
                w.writeExtensionObject(typeId: .numeric(ServiceId.userNameIdentityToken)) { t in
                    t.writeString(policy.policyId)
                    t.writeString(user)
                    t.writeByteString(password)
                    t.writeString(nil)  // EncryptionAlgorithm: none
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
