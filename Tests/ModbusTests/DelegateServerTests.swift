import Foundation
import Synchronization
import Testing
@testable import Modbus

#if canImport(Glibc)
import Glibc
import Platform
import TestSupport
#endif

/// Commands a test posts for a delegate (read on the server thread after `wake()`).
final class PostedCommands: Sendable {
    private let queue = Mutex<[String]>([])
    func post(_ c: String) { queue.withLock { $0.append(c) } }
    func take() -> [String] { queue.withLock { q in defer { q = [] }; return q } }
}

/// Answers from one mapping; a read of holding 99 stalls the listener it came in on for
/// `stallMs` (answered first); a posted "drop" closes every client.
final class StallingDelegate: ModbusServerDelegate {
    let mapping: ModbusMapping
    let commands: PostedCommands
    let stallMs: Int64

    init(_ mapping: ModbusMapping, commands: PostedCommands, stallMs: Int64 = 400) {
        self.mapping = mapping
        self.commands = commands
        self.stallMs = stallMs
    }

    func answer(_ request: ModbusRequest, server: ModbusServerControl) -> ModbusServerAction {
        if request.function == 3 && request.address == 99 {
            server.pause(listener: request.listener, untilMonotonicNs: monotonicNowNs() + stallMs * 1_000_000)
        }
        return .reply(mapping)
    }

    func serverWoken(_ server: ModbusServerControl) {
        for c in commands.take() where c == "drop" { server.closeConnections() }
    }
}

/// A `.delegate` server with two listeners (as the simulator serves two devices).
func twoListenerServer(_ commands: PostedCommands) throws -> (ModbusServer, second: Int) {
    let config = ModbusServer.Configuration(host: "127.0.0.1", port: 0, idleTimeoutMs: 0, threadName: "test-delegate")
    let server = try ModbusServer(configuration: config, policy: .delegate({
        StallingDelegate(try! sampleMapping(), commands: commands)
    }))
    let (_, second) = try server.addListener(port: 0)
    try server.start()
    return (server, second)
}

@Suite("ModbusServer with a delegate policy")
struct DelegateServerTests {
    /// A stall holds back only the stalled listener's clients (answered late, not lost);
    /// another listener's client is served at once meanwhile.
    @Test func aStallHoldsOnlyItsListener() async throws {
        let commands = PostedCommands()
        let (server, second) = try twoListenerServer(commands)
        defer { server.stop(); server.join() }
        let first = server.port
        try await onThread {
            let a = try ModbusClient(host: "127.0.0.1", port: first, responseTimeoutMs: 3000)
            let b = try ModbusClient(host: "127.0.0.1", port: second, responseTimeoutMs: 3000)
            try a.connect()
            try b.connect()
            #expect(try a.readRegisters(table: .holding, address: 99, count: 1) == [1099])  // starts the stall
            let t0 = Date()
            #expect(try b.readRegisters(table: .holding, address: 5, count: 1) == [1005])
            #expect(Date().timeIntervalSince(t0) < 0.2)
            #expect(try a.readRegisters(table: .holding, address: 5, count: 1) == [1005])  // late
            #expect(Date().timeIntervalSince(t0) > 0.25)
        }
    }

    /// Commands from other threads reach the delegate through `wake()`; closing from there
    /// closes the clients (the simulator's `drop`).
    @Test func aWokenDelegateClosesEveryClient() throws {
        let commands = PostedCommands()
        let (server, second) = try twoListenerServer(commands)
        defer { server.stop(); server.join() }
        let s1 = try RawSocket(port: server.port)
        let s2 = try RawSocket(port: second)
        s1.send(readFrame(tid: 1, address: 2, count: 1))
        #expect(s1.receive() == [0, 1, 0, 0, 0, 5, 1, 3, 2, 0x03, 0xEA])
        s2.send(readFrame(tid: 2, address: 2, count: 1))
        #expect(s2.receive() == [0, 2, 0, 0, 0, 5, 1, 3, 2, 0x03, 0xEA])
        commands.post("drop")
        server.wake()
        #expect(s1.receive() == [])
        #expect(s2.receive() == [])
        #expect(waitUntil { server.counters().clients == 0 })
    }

    /// The one framer's rules hold for a delegate too: a function code ≥ 0x80 is not a request
    /// and closes the connection (the old simulator server answered it with exception 1).
    @Test func anExceptionFunctionCodeCloses() throws {
        let commands = PostedCommands()
        let (server, _) = try twoListenerServer(commands)
        defer { server.stop(); server.join() }
        let s = try RawSocket(port: server.port)
        s.send(readFrame(tid: 1, function: 0x81, address: 0, count: 1))
        #expect(s.receive() == [])
        #expect(server.counters().closedMalformed == 1)
    }
}
