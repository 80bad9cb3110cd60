/// The structures of the services this client uses (OPC UA Part 4), with their binary
/// encodings (Part 6). Field order follows the specification.

/// How messages on an endpoint are protected.
public enum MessageSecurityMode: UInt32, Sendable, Hashable {
    case invalid = 0, none = 1, sign = 2, signAndEncrypt = 3

    public var name: String {
        switch self {
        case .invalid: return "Invalid"
        case .none: return "None"
        case .sign: return "Sign"
        case .signAndEncrypt: return "SignAndEncrypt"
        }
    }
}

/// Which logins an endpoint accepts.
public enum UserTokenType: UInt32, Sendable, Hashable {
    case anonymous = 0, userName = 1, certificate = 2, issuedToken = 3
}

/// One login an endpoint accepts, and how its secret must be protected.
public struct UserTokenPolicy: Sendable, Hashable {
    public var policyId: String?
    /// Nil for a token type this client does not know.
    public var tokenType: UserTokenType?
    public var issuedTokenType: String?
    public var issuerEndpointUrl: String?
    /// The policy that protects the token's secret; empty or null: the channel's.
    public var securityPolicyUri: String?

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        policyId = try r.readString("UserTokenPolicy.PolicyId")
        tokenType = UserTokenType(rawValue: try r.readUInt32("UserTokenPolicy.TokenType"))
        issuedTokenType = try r.readString("UserTokenPolicy.IssuedTokenType")
        issuerEndpointUrl = try r.readString("UserTokenPolicy.IssuerEndpointUrl")
        securityPolicyUri = try r.readString("UserTokenPolicy.SecurityPolicyUri")
    }
}

/// A server or client application.
public struct ApplicationDescription: Sendable, Hashable {
    public var applicationUri: String?
    public var productUri: String?
    public var applicationName: LocalizedText
    /// 0 server, 1 client, 2 client and server, 3 discovery server.
    public var applicationType: UInt32
    public var gatewayServerUri: String?
    public var discoveryProfileUri: String?
    public var discoveryUrls: [String?]

    public init(applicationUri: String, productUri: String, applicationName: String, applicationType: UInt32) {
        self.applicationUri = applicationUri
        self.productUri = productUri
        self.applicationName = LocalizedText(text: applicationName)
        self.applicationType = applicationType
        gatewayServerUri = nil
        discoveryProfileUri = nil
        discoveryUrls = []
    }

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        applicationUri = try r.readString("ApplicationDescription.ApplicationUri")
        productUri = try r.readString("ApplicationDescription.ProductUri")
        applicationName = try r.readLocalizedText("ApplicationDescription.ApplicationName")
        applicationType = try r.readUInt32("ApplicationDescription.ApplicationType")
        gatewayServerUri = try r.readString("ApplicationDescription.GatewayServerUri")
        discoveryProfileUri = try r.readString("ApplicationDescription.DiscoveryProfileUri")
        discoveryUrls = try r.readArray("ApplicationDescription.DiscoveryUrls", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
            try e.readString("ApplicationDescription.DiscoveryUrls")
        }
    }

    func encode(_ w: inout UABinaryWriter) {
        w.writeString(applicationUri)
        w.writeString(productUri)
        w.writeLocalizedText(applicationName)
        w.writeUInt32(applicationType)
        w.writeString(gatewayServerUri)
        w.writeString(discoveryProfileUri)
        w.writeArray(discoveryUrls) { $0.writeString($1) }
    }
}

/// An endpoint a server offers: its URL, security and the logins it accepts.
public struct EndpointDescription: Sendable, Hashable {
    public var endpointUrl: String?
    public var server: ApplicationDescription
    public var serverCertificate: [UInt8]?
    /// Nil for a mode this client does not know.
    public var securityMode: MessageSecurityMode?
    public var securityPolicyUri: String?
    public var userIdentityTokens: [UserTokenPolicy]
    public var transportProfileUri: String?
    public var securityLevel: UInt8

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        endpointUrl = try r.readString("EndpointDescription.EndpointUrl")
        server = try ApplicationDescription(decoding: &r)
        serverCertificate = try r.readByteString("EndpointDescription.ServerCertificate")
        securityMode = MessageSecurityMode(rawValue: try r.readUInt32("EndpointDescription.SecurityMode"))
        securityPolicyUri = try r.readString("EndpointDescription.SecurityPolicyUri")
        userIdentityTokens = try r.readArray("EndpointDescription.UserIdentityTokens", minElementBytes: 20) { (e: inout UABinaryReader) throws(UADecodingError) in
            try UserTokenPolicy(decoding: &e)
        }
        transportProfileUri = try r.readString("EndpointDescription.TransportProfileUri")
        securityLevel = try r.readUInt8("EndpointDescription.SecurityLevel")
    }

    /// The short name of the security policy: `None`, `Basic256Sha256` …
    public var securityPolicyName: String {
        guard let uri = securityPolicyUri, let hash = uri.lastIndex(of: "#") else { return securityPolicyUri ?? "?" }
        return String(uri[uri.index(after: hash)...])
    }

    /// SHA-1 of the server certificate, hex (what `opcua trust` and the server's operator show).
    public var serverCertificateThumbprint: String? {
        guard let c = serverCertificate, !c.isEmpty else { return nil }
        return UACrypto.hex(UACrypto.sha1(c))
    }

    /// Whether messages on this endpoint are signed or encrypted.
    public var isSecured: Bool { securityMode == .sign || securityMode == .signAndEncrypt }
}

/// Node attributes by id (Part 6, A.1).
public enum AttributeId: UInt32, Sendable, Hashable {
    case nodeId = 1, nodeClass = 2, browseName = 3, displayName = 4, description = 5
    case value = 13, dataType = 14, valueRank = 15, accessLevel = 17
}

/// Which timestamps a Read or a monitored item returns.
public enum TimestampsToReturn: UInt32, Sendable, Hashable {
    case source = 0, server = 1, both = 2, neither = 3
}

/// One attribute of one node to read.
public struct ReadValueId: Sendable, Hashable {
    public var nodeId: NodeId
    public var attributeId: UInt32
    public var indexRange: String?

    public init(_ nodeId: NodeId, attribute: AttributeId = .value, indexRange: String? = nil) {
        self.nodeId = nodeId
        self.attributeId = attribute.rawValue
        self.indexRange = indexRange
    }

    func encode(_ w: inout UABinaryWriter) {
        w.writeNodeId(nodeId)
        w.writeUInt32(attributeId)
        w.writeString(indexRange)
        w.writeQualifiedName(QualifiedName(name: nil))  // DataEncoding: default
    }
}

/// The class of a node (a bit each, so a browse can filter by a mask).
public struct NodeClass: Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let object = NodeClass(rawValue: 1)
    public static let variable = NodeClass(rawValue: 2)
    public static let method = NodeClass(rawValue: 4)

    public var description: String {
        switch rawValue {
        case 0: return "Unspecified"
        case 1: return "Object"
        case 2: return "Variable"
        case 4: return "Method"
        case 8: return "ObjectType"
        case 16: return "VariableType"
        case 32: return "ReferenceType"
        case 64: return "DataType"
        case 128: return "View"
        default: return "NodeClass \(rawValue)"
        }
    }
}

/// One reference a Browse found.
public struct ReferenceDescription: Sendable, Hashable {
    public var referenceTypeId: NodeId
    public var isForward: Bool
    public var nodeId: ExpandedNodeId
    public var browseName: QualifiedName
    public var displayName: LocalizedText
    public var nodeClass: NodeClass
    public var typeDefinition: ExpandedNodeId

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        referenceTypeId = try r.readNodeId("ReferenceDescription.ReferenceTypeId")
        isForward = try r.readBool("ReferenceDescription.IsForward")
        nodeId = try r.readExpandedNodeId("ReferenceDescription.NodeId")
        browseName = try r.readQualifiedName("ReferenceDescription.BrowseName")
        displayName = try r.readLocalizedText("ReferenceDescription.DisplayName")
        nodeClass = NodeClass(rawValue: try r.readUInt32("ReferenceDescription.NodeClass"))
        typeDefinition = try r.readExpandedNodeId("ReferenceDescription.TypeDefinition")
    }
}

/// The references of one browsed node, and a continuation point when more remain.
struct BrowseResult {
    var status: StatusCode
    var continuationPoint: [UInt8]?
    var references: [ReferenceDescription]

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        status = try r.readStatusCode("BrowseResult.StatusCode")
        continuationPoint = try r.readByteString("BrowseResult.ContinuationPoint")
        references = try r.readArray("BrowseResult.References", minElementBytes: 15) { (e: inout UABinaryReader) throws(UADecodingError) in
            try ReferenceDescription(decoding: &e)
        }
    }
}

/// Binary encoding ids (namespace 0) of the requests and responses used here.
enum ServiceId {
    static let serviceFault: UInt32 = 397
    static let getEndpointsRequest: UInt32 = 428, getEndpointsResponse: UInt32 = 431
    static let createSessionRequest: UInt32 = 461, createSessionResponse: UInt32 = 464
    static let activateSessionRequest: UInt32 = 467, activateSessionResponse: UInt32 = 470
    static let closeSessionRequest: UInt32 = 473, closeSessionResponse: UInt32 = 476
    static let browseRequest: UInt32 = 527, browseResponse: UInt32 = 530
    static let browseNextRequest: UInt32 = 533, browseNextResponse: UInt32 = 536
    static let readRequest: UInt32 = 631, readResponse: UInt32 = 634
    static let anonymousIdentityToken: UInt32 = 321, userNameIdentityToken: UInt32 = 324
    static let createMonitoredItemsRequest: UInt32 = 751, createMonitoredItemsResponse: UInt32 = 754
    static let createSubscriptionRequest: UInt32 = 787, createSubscriptionResponse: UInt32 = 790
    static let publishRequest: UInt32 = 826, publishResponse: UInt32 = 829
    static let republishRequest: UInt32 = 832, republishResponse: UInt32 = 835
    static let deleteSubscriptionsRequest: UInt32 = 847, deleteSubscriptionsResponse: UInt32 = 850
    static let dataChangeFilter: UInt32 = 724, dataChangeNotification: UInt32 = 811, statusChangeNotification: UInt32 = 820
}
