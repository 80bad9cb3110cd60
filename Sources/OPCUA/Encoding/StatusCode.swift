/// An OPC UA StatusCode: the top two bits say Good (00), Uncertain (01) or Bad (10/11); the
/// next 14 bits name the code; the low 16 bits are info bits (overflow, limits …).
public struct StatusCode: Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public enum Severity: String, Sendable, Hashable {
        case good, uncertain, bad
    }

    public var severity: Severity {
        switch rawValue >> 30 {
        case 0: return .good
        case 1: return .uncertain
        default: return .bad
        }
    }

    /// Good only: Uncertain is not Good.
    public var isGood: Bool { severity == .good }
    public var isBad: Bool { severity == .bad }

    /// The code without its info bits.
    public var code: UInt32 { rawValue & 0xFFFF_0000 }

    /// The symbolic name (`BadNodeIdUnknown`), nil for a code not in the table.
    public var name: String? { Self.names[code] }

    /// `BadNodeIdUnknown (0x80340000)`, or `Bad (0x80AB1234)` for an unnamed code.
    public var description: String {
        let hex = String(rawValue, radix: 16, uppercase: true)
        let h = "0x" + String(repeating: "0", count: max(0, 8 - hex.count)) + hex
        if rawValue == 0 { return "Good" }
        let n = name ?? severity.rawValue.capitalized
        return "\(n) (\(h))"
    }

    public static let good = StatusCode(rawValue: 0)
    public static let uncertain = StatusCode(rawValue: 0x4000_0000)
    public static let bad = StatusCode(rawValue: 0x8000_0000)
    public static let badUnexpectedError = StatusCode(rawValue: 0x8001_0000)
    public static let badInternalError = StatusCode(rawValue: 0x8002_0000)
    public static let badCommunicationError = StatusCode(rawValue: 0x8005_0000)
    public static let badDecodingError = StatusCode(rawValue: 0x8007_0000)
    public static let badTimeout = StatusCode(rawValue: 0x800A_0000)
    public static let badServiceUnsupported = StatusCode(rawValue: 0x800B_0000)
    public static let badUserAccessDenied = StatusCode(rawValue: 0x801F_0000)
    public static let badIdentityTokenInvalid = StatusCode(rawValue: 0x8020_0000)
    public static let badIdentityTokenRejected = StatusCode(rawValue: 0x8021_0000)
    public static let badSecureChannelIdInvalid = StatusCode(rawValue: 0x8022_0000)
    public static let badSessionIdInvalid = StatusCode(rawValue: 0x8025_0000)
    public static let badSessionClosed = StatusCode(rawValue: 0x8026_0000)
    public static let badSubscriptionIdInvalid = StatusCode(rawValue: 0x8028_0000)
    public static let badNodeIdInvalid = StatusCode(rawValue: 0x8033_0000)
    public static let badNodeIdUnknown = StatusCode(rawValue: 0x8034_0000)
    public static let badAttributeIdInvalid = StatusCode(rawValue: 0x8035_0000)
    public static let badNoSubscription = StatusCode(rawValue: 0x8079_0000)
    public static let badSequenceNumberUnknown = StatusCode(rawValue: 0x807A_0000)
    public static let badMessageNotAvailable = StatusCode(rawValue: 0x807B_0000)
    public static let badTcpMessageTypeInvalid = StatusCode(rawValue: 0x807E_0000)
    public static let badTcpMessageTooLarge = StatusCode(rawValue: 0x8080_0000)
    public static let badTcpEndpointUrlInvalid = StatusCode(rawValue: 0x8083_0000)
    public static let badSecureChannelClosed = StatusCode(rawValue: 0x8086_0000)
    public static let badSecurityPolicyRejected = StatusCode(rawValue: 0x8055_0000)
    public static let badSensorFailure = StatusCode(rawValue: 0x808C_0000)

    /// Names of the codes a client meets (OPC UA Part 4 / Part 6 tables).
    static let names: [UInt32: String] = [
        0x00000000: "Good",
        0x40000000: "Uncertain",
        0x80000000: "Bad",
        0x80010000: "BadUnexpectedError",
        0x80020000: "BadInternalError",
        0x80030000: "BadOutOfMemory",
        0x80040000: "BadResourceUnavailable",
        0x80050000: "BadCommunicationError",
        0x80060000: "BadEncodingError",
        0x80070000: "BadDecodingError",
        0x80080000: "BadEncodingLimitsExceeded",
        0x80B80000: "BadRequestTooLarge",
        0x80B90000: "BadResponseTooLarge",
        0x80090000: "BadUnknownResponse",
        0x800A0000: "BadTimeout",
        0x800B0000: "BadServiceUnsupported",
        0x800C0000: "BadShutdown",
        0x800D0000: "BadServerNotConnected",
        0x800E0000: "BadServerHalted",
        0x800F0000: "BadNothingToDo",
        0x80100000: "BadTooManyOperations",
        0x80110000: "BadDataTypeIdUnknown",
        0x80120000: "BadCertificateInvalid",
        0x80130000: "BadSecurityChecksFailed",
        0x801A0000: "BadCertificateUntrusted",
        0x801F0000: "BadUserAccessDenied",
        0x80200000: "BadIdentityTokenInvalid",
        0x80210000: "BadIdentityTokenRejected",
        0x80220000: "BadSecureChannelIdInvalid",
        0x80230000: "BadInvalidTimestamp",
        0x80240000: "BadNonceInvalid",
        0x80250000: "BadSessionIdInvalid",
        0x80260000: "BadSessionClosed",
        0x80270000: "BadSessionNotActivated",
        0x80280000: "BadSubscriptionIdInvalid",
        0x802A0000: "BadRequestHeaderInvalid",
        0x802B0000: "BadTimestampsToReturnInvalid",
        0x802C0000: "BadRequestCancelledByClient",
        0x80310000: "BadNoCommunication",
        0x80320000: "BadWaitingForInitialData",
        0x80330000: "BadNodeIdInvalid",
        0x80340000: "BadNodeIdUnknown",
        0x80350000: "BadAttributeIdInvalid",
        0x80360000: "BadIndexRangeInvalid",
        0x80370000: "BadIndexRangeNoData",
        0x80380000: "BadDataEncodingInvalid",
        0x80390000: "BadDataEncodingUnsupported",
        0x803A0000: "BadNotReadable",
        0x803B0000: "BadNotWritable",
        0x803C0000: "BadOutOfRange",
        0x803D0000: "BadNotSupported",
        0x803E0000: "BadNotFound",
        0x803F0000: "BadObjectDeleted",
        0x80400000: "BadNotImplemented",
        0x80410000: "BadMonitoringModeInvalid",
        0x80420000: "BadMonitoredItemIdInvalid",
        0x80430000: "BadMonitoredItemFilterInvalid",
        0x80440000: "BadMonitoredItemFilterUnsupported",
        0x80450000: "BadFilterNotAllowed",
        0x804A0000: "BadContinuationPointInvalid",
        0x804B0000: "BadNoContinuationPoints",
        0x804C0000: "BadReferenceTypeIdInvalid",
        0x804D0000: "BadBrowseDirectionInvalid",
        0x804E0000: "BadNodeNotInView",
        0x80540000: "BadSecurityModeRejected",
        0x80550000: "BadSecurityPolicyRejected",
        0x80560000: "BadTooManySessions",
        0x80570000: "BadUserSignatureInvalid",
        0x80580000: "BadApplicationSignatureInvalid",
        0x806B0000: "BadViewIdUnknown",
        0x80700000: "BadMaxAgeInvalid",
        0x80740000: "BadTypeMismatch",
        0x80770000: "BadTooManySubscriptions",
        0x80780000: "BadTooManyPublishRequests",
        0x80790000: "BadNoSubscription",
        0x807A0000: "BadSequenceNumberUnknown",
        0x807B0000: "BadMessageNotAvailable",
        0x807D0000: "BadTcpServerTooBusy",
        0x807E0000: "BadTcpMessageTypeInvalid",
        0x807F0000: "BadTcpSecureChannelUnknown",
        0x80800000: "BadTcpMessageTooLarge",
        0x80810000: "BadTcpNotEnoughResources",
        0x80820000: "BadTcpInternalError",
        0x80830000: "BadTcpEndpointUrlInvalid",
        0x80840000: "BadRequestInterrupted",
        0x80850000: "BadRequestTimeout",
        0x80860000: "BadSecureChannelClosed",
        0x80870000: "BadSecureChannelTokenUnknown",
        0x80880000: "BadSequenceNumberInvalid",
        0x80890000: "BadConfigurationError",
        0x808A0000: "BadNotConnected",
        0x808B0000: "BadDeviceFailure",
        0x808C0000: "BadSensorFailure",
        0x808D0000: "BadOutOfService",
        0x808E0000: "BadDeadbandFilterInvalid",
        0x809B0000: "BadNoData",
        0x809E0000: "BadDataUnavailable",
        0x80AB0000: "BadInvalidArgument",
        0x80AC0000: "BadConnectionRejected",
        0x80AD0000: "BadDisconnect",
        0x80AE0000: "BadConnectionClosed",
        0x80AF0000: "BadInvalidState",
        0x80B00000: "BadEndOfStream",
        0x80B10000: "BadNoDataAvailable",
        0x80B20000: "BadWaitingForResponse",
        0x80B30000: "BadOperationAbandoned",
        0x80B40000: "BadExpectedStreamToBlock",
        0x80B50000: "BadWouldBlock",
        0x80B60000: "BadSyntaxError",
        0x80B70000: "BadMaxConnectionsReached",
        0x810E0000: "BadLicenseExpired",
        0x40900000: "UncertainLastUsableValue",
        0x40910000: "UncertainSubstituteValue",
        0x40920000: "UncertainInitialValue",
        0x40930000: "UncertainSensorNotAccurate",
        0x40940000: "UncertainEngineeringUnitsExceeded",
        0x40950000: "UncertainSubNormal",
        0x408F0000: "UncertainNoCommunicationLastUsableValue",
        0x40A40000: "UncertainDataSubNormal",
        0x002D0000: "GoodSubscriptionTransferred",
        0x002E0000: "GoodCompletesAsynchronously",
        0x002F0000: "GoodOverload",
        0x00300000: "GoodClamped",
        0x00A50000: "GoodNoData",
        0x00A60000: "GoodMoreData",
        0x00960000: "GoodLocalOverride",
        0x00A90000: "GoodCallAgain",
    ]
}
