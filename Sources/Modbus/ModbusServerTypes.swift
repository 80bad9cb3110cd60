import Platform
#if canImport(Glibc)
import Glibc
#endif

/// A client's address as the server reports it (the system layer's `NetAddress`).
public typealias PeerAddress = NetAddress

/// The four data tables a read-only server answers from: one immutable snapshot. Every request
/// is answered from exactly one image, so a reply never mixes two snapshots.
public final class ModbusImage: Sendable {
    /// Coil values (FC1), 0 or 1, by address.
    public let coils: [UInt8]
    /// Discrete input values (FC2), 0 or 1, by address.
    public let discreteInputs: [UInt8]
    /// Holding register values (FC3) by address.
    public let holdingRegisters: [UInt16]
    /// Input register values (FC4) by address.
    public let inputRegisters: [UInt16]

    /// A snapshot of the four tables; each array's count is the number of readable addresses.
    public init(coils: [UInt8], discreteInputs: [UInt8], holdingRegisters: [UInt16], inputRegisters: [UInt16]) {
        self.coils = coils
        self.discreteInputs = discreteInputs
        self.holdingRegisters = holdingRegisters
        self.inputRegisters = inputRegisters
    }

    /// An image with no addresses at all: every read gets exception 2.
    public static let empty = ModbusImage(coils: [], discreteInputs: [], holdingRegisters: [], inputRegisters: [])
}

/// Why a connection attempt was closed at accept.
public enum ModbusRefusal: String, Sendable, Hashable {
    /// The peer is not in the allow list.
    case notAllowed = "not_allowed"
    /// `maxClients` connections are open already.
    case tooManyClients = "too_many_clients"
    /// accept returned a descriptor ≥ the limit (1024: libmodbus's `select()` aborts beyond).
    case descriptorLimit = "descriptor_limit"
}

/// Why the server closed a client connection.
public enum ModbusCloseReason: Sendable, Hashable, CustomStringConvertible {
    /// The client closed (or reset) its side.
    case peerClosed
    /// No complete request for `idleTimeoutMs`.
    case idleTimeout
    /// A frame begun more than `byteTimeoutMs` ago is still incomplete (slow sender).
    case byteTimeout
    /// Replies waiting for `writeStallTimeoutMs` without the client taking any.
    case writeStall
    /// The bytes are not Modbus/TCP.
    case malformed(ModbusFrameProblem)
    /// A socket call failed (errno).
    case socketError(Int32)
    /// The server stopped.
    case serverStopped
    /// The server's owner closed it (a `.delegate` policy's `.close` answer or
    /// `ModbusServerControl.closeConnections`, e.g. the simulator's `drop`).
    case closedByOwner

    public var description: String {
        switch self {
        case .peerClosed: return "closed by peer"
        case .idleTimeout: return "idle timeout"
        case .byteTimeout: return "incomplete frame past the byte timeout"
        case .writeStall: return "replies not read by the client"
        case .malformed(let p): return "malformed frame: \(p)"
        case .socketError(let e): return "socket error \(ModbusError.errnoName(e))"
        case .serverStopped: return "server stopped"
        case .closedByOwner: return "closed by the server's owner"
        }
    }
}

/// What a `ModbusServer` reports to its owner, on the server's loop thread.
public enum ModbusServerEvent: Sendable, Hashable {
    case accepted(PeerAddress)
    /// Closed at accept; nothing was read from the peer.
    case refused(PeerAddress, ModbusRefusal)
    /// A write function was answered with an exception; nothing changed.
    case writeRejected(peer: PeerAddress, unit: UInt8, function: UInt8, address: UInt16?, count: UInt16?)
    case closed(PeerAddress, ModbusCloseReason)
    /// `accept` failed (EMFILE, ENFILE, ENOBUFS …); the listener pauses for 100 ms.
    case acceptFailed(errno: Int32)
    /// libmodbus failed to build a reply (never expected); the connection is closed.
    case replyFailed(PeerAddress, ModbusError)
}

/// Counters of a `ModbusServer` since it was created: a snapshot for metrics.
public struct ModbusServerCounters: Sendable, Hashable {
    /// Complete request frames received (valid or not).
    public var requests: UInt64 = 0
    /// Reads answered with data (`.delegate`: every `.reply` answered, writes included).
    public var readsAnswered: UInt64 = 0
    /// Of those, replies written straight onto an idle client socket (the rest went through
    /// the output buffer; see `ModbusReplier.replyDirect`).
    public var readsSentDirect: UInt64 = 0
    /// Exception replies by code (1 illegal function, 2 illegal address, 3 illegal value,
    /// 11 gateway target: unit id not answered).
    public var exceptionIllegalFunction: UInt64 = 0
    public var exceptionIllegalAddress: UInt64 = 0
    public var exceptionIllegalValue: UInt64 = 0
    public var exceptionGatewayTarget: UInt64 = 0
    /// Write requests refused (each also answered with an exception and reported).
    public var writesRejected: UInt64 = 0
    /// Connections accepted.
    public var accepted: UInt64 = 0
    public var refusedNotAllowed: UInt64 = 0
    public var refusedTooManyClients: UInt64 = 0
    public var refusedDescriptorLimit: UInt64 = 0
    /// accept() failures (EMFILE …).
    public var acceptErrors: UInt64 = 0
    public var closedMalformed: UInt64 = 0
    public var closedByteTimeout: UInt64 = 0
    public var closedIdle: UInt64 = 0
    public var closedWriteStall: UInt64 = 0
    /// Images published (and taken) since start.
    public var publishes: UInt64 = 0
    /// Client connections open now.
    public var clients: Int = 0

    /// All counts zero.
    public init() {}

    /// All refusals at accept.
    public var refused: UInt64 { refusedNotAllowed + refusedTooManyClients + refusedDescriptorLimit }

    /// All exception replies.
    public var exceptions: UInt64 {
        exceptionIllegalFunction + exceptionIllegalAddress + exceptionIllegalValue + exceptionGatewayTarget
    }

    /// Exception replies keyed by exception code.
    public var exceptionsByCode: [UInt8: UInt64] {
        [1: exceptionIllegalFunction, 2: exceptionIllegalAddress, 3: exceptionIllegalValue,
         11: exceptionGatewayTarget]
    }

    mutating func countException(_ code: UInt8) {
        switch code {
        case 1: exceptionIllegalFunction += 1
        case 2: exceptionIllegalAddress += 1
        case 3: exceptionIllegalValue += 1
        default: exceptionGatewayTarget += 1
        }
    }

    /// Adds the event counts of `d` (not `clients`, which is a level).
    mutating func add(_ d: ModbusServerCounters) {
        requests += d.requests
        readsAnswered += d.readsAnswered
        readsSentDirect += d.readsSentDirect
        exceptionIllegalFunction += d.exceptionIllegalFunction
        exceptionIllegalAddress += d.exceptionIllegalAddress
        exceptionIllegalValue += d.exceptionIllegalValue
        exceptionGatewayTarget += d.exceptionGatewayTarget
        writesRejected += d.writesRejected
        accepted += d.accepted
        refusedNotAllowed += d.refusedNotAllowed
        refusedTooManyClients += d.refusedTooManyClients
        refusedDescriptorLimit += d.refusedDescriptorLimit
        acceptErrors += d.acceptErrors
        closedMalformed += d.closedMalformed
        closedByteTimeout += d.closedByteTimeout
        closedIdle += d.closedIdle
        closedWriteStall += d.closedWriteStall
    }
}

/// A server that could not be set up: which call failed, errno, and on which address.
public struct ModbusServerError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The listen host is not an IPv4 or IPv6 literal and does not resolve.
        case badAddress
        /// socket/bind/listen failed (EADDRINUSE, EACCES for port < 1024 …).
        case listen
        /// A descriptor at or above the configured limit (1024).
        case descriptorLimit
        /// epoll, eventfd or the loop thread could not be created.
        case eventLoop
        /// The libmodbus reply context could not be created.
        case libmodbus
        /// `start()` called twice, or after `stop()`.
        case state
    }

    public var kind: Kind
    public var function: String
    public var errno: Int32
    /// host:port being set up.
    public var address: String

    public init(kind: Kind, function: String, errno: Int32, address: String) {
        self.kind = kind
        self.function = function
        self.errno = errno
        self.address = address
    }

    public var description: String {
        switch kind {
        case .badAddress: return "\(address): not an IPv4 or IPv6 address, and the name does not resolve"
        case .descriptorLimit: return "\(address): \(function) returned a descriptor at or above the limit"
        case .state: return "\(address): \(function): server already started or stopped"
        default: return "\(address): \(function) failed: \(socketErrnoName(errno))"
        }
    }
}

/// errno names for socket set-up and accept failures (thread-safe, unlike `strerror`).
func socketErrnoName(_ e: Int32) -> String {
    let errno = Errno(e)
    if e == EACCES { return errno.description + " (ports below 1024 need CAP_NET_BIND_SERVICE)" }
    return errno.meaning == nil ? ModbusError.errnoName(e) : errno.description
}
