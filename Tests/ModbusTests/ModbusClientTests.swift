import Foundation
import Testing
@testable import Modbus

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// A mapping with recognisable values in every table: holding h = 1000 + h, input i = 2000 + i,
/// coils odd = 1, discrete inputs multiple of 3 = 1.
func sampleMapping() throws -> ModbusMapping {
    let m = try ModbusMapping(coils: 0..<64, discrete: 0..<64, holding: 0..<200, input: 100..<110)
    for a in 0..<200 { m.setRegister(.holding, a, UInt16(1000 + a)) }
    for a in 100..<110 { m.setRegister(.input, a, UInt16(2000 + a)) }
    for a in 0..<64 { m.setBit(.coil, a, a % 2 == 1); m.setBit(.discrete, a, a % 3 == 0) }
    return m
}

@Suite("ModbusClient against a libmodbus server")
struct ModbusClientTests {
    @Test func readsAllFourTables() async throws {
        let server = try InProcessServer { MappingDelegate(try sampleMapping()) }
        defer { server.stop() }
        let port = server.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 1000)
            try c.connect()
            #expect(c.isConnected)
            #expect(try c.readRegisters(table: .holding, address: 10, count: 3) == [1010, 1011, 1012])
            #expect(try c.readRegisters(table: .holding, address: 0, count: 125).last == 1124)
            #expect(try c.readRegisters(table: .input, address: 105, count: 2) == [2105, 2106])
            #expect(try c.readBits(table: .coil, address: 0, count: 4) == [0, 1, 0, 1])
            #expect(try c.readBits(table: .discrete, address: 2, count: 3) == [0, 1, 0])
            try c.writeRegister(address: 3, value: 77)
            #expect(try c.readRegisters(table: .holding, address: 3, count: 1) == [77])
        }
    }

    @Test func exceptionCarriesContextAndKeepsTheConnection() async throws {
        let server = try InProcessServer { MappingDelegate(try sampleMapping()) }
        defer { server.stop() }
        let port = server.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 1000)
            try c.connect()
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 0, count: 2)
                Issue.record("expected exception 2")
            } catch {
                #expect(error.kind == .exception(2))
                #expect(error.exceptionCode == 2)
                #expect(error.errno == ModbusError.exceptionErrno(2))
                #expect(error.function == "modbus_read_input_registers")
                #expect(error.unit == 1 && error.table == "input" && error.address == 0 && error.count == 2)
                #expect(error.endpoint == "127.0.0.1:\(port)")
                #expect(error.description.hasSuffix("input 0+2: exception 2 (illegal data address)"))
            }
            #expect(c.isConnected)
            #expect(try c.readRegisters(table: .input, address: 100, count: 1) == [2100])
        }
    }

    /// libmodbus reports a host name that does not resolve as ECONNREFUSED; the error says
    /// what happened instead (a `.invalid` name never resolves, RFC 2606).
    @Test func aNameThatDoesNotResolveIsNamedAsSuch() async throws {
        try await onThread {
            let c = try ModbusClient(host: "no-such-plc.invalid", port: 502, responseTimeoutMs: 500)
            do throws(ModbusError) {
                try c.connect()
                Issue.record("expected connect failure")
            } catch {
                #expect(error.kind == .connect)
                #expect(error.resolveFailure?.hasPrefix("EAI_") == true, "\(error)")
                #expect(error.description.hasPrefix("modbus_connect no-such-plc.invalid:502 unit 1: connect failed: host name no-such-plc.invalid does not resolve (EAI_"),
                        "\(error)")
            }
            // A refused connection to an address is still ECONNREFUSED, with no resolve failure.
            let r = try ModbusClient(host: "127.0.0.1", port: closedPort(), responseTimeoutMs: 500)
            do throws(ModbusError) {
                try r.connect()
                Issue.record("expected connect failure")
            } catch {
                #expect(error.errno == ECONNREFUSED && error.resolveFailure == nil)
                #expect(error.description.hasSuffix("connect failed (ECONNREFUSED)"), "\(error)")
            }
        }
    }

    @Test func refusedConnectIsTypedAndReadsSayNotConnected() async throws {
        let port = closedPort()
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, responseTimeoutMs: 500)
            do throws(ModbusError) {
                try c.connect()
                Issue.record("expected connect failure")
            } catch {
                #expect(error.kind == .connect)
                #expect(error.errno == ECONNREFUSED)
                #expect(error.function == "modbus_connect")
            }
            #expect(!c.isConnected)
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 0, count: 1)
                Issue.record("expected not connected")
            } catch {
                #expect(error.kind == .notConnected)
            }
        }
    }

    @Test func badArgumentsFailBeforeSending() async throws {
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: 1502)
            for (table, count) in [(ModbusTable.holding, 126), (.holding, 0), (.coil, 2001)] {
                do throws(ModbusError) {
                    if table.isBitTable { _ = try c.readBits(table: table, address: 0, count: count) }
                    else { _ = try c.readRegisters(table: table, address: 0, count: count) }
                    Issue.record("expected EINVAL for \(table) \(count)")
                } catch {
                    #expect(error.kind == .other && error.errno == EINVAL)
                }
            }
            do throws(ModbusError) {
                _ = try c.readBits(table: .holding, address: 0, count: 1)
                Issue.record("expected EINVAL for bits of a register table")
            } catch {
                #expect(error.errno == EINVAL)
            }
        }
        #expect(throws: ModbusError.self) { try ModbusClient(host: "127.0.0.1", port: 0) }
    }

    /// The known failure of Modbus clients: a request times out, its answer arrives late, and a
    /// naive client takes it for the answer to the next request. Here the server answers the
    /// first request after 400 ms with 111; the client gave up after 100 ms and must read 222,
    /// the value at the time of its second request.
    @Test func lateAnswerIsNeverTakenForTheNextOne() async throws {
        let server = try InProcessServer {
            MappingDelegate(try ModbusMapping(holding: 0..<10)) { n, _, m in
                if n == 1 {
                    m.setRegister(.holding, 0, 111)
                    usleep(400_000)  // blocks the whole server: the late answer
                } else {
                    m.setRegister(.holding, 0, 222)
                }
                return nil
            }
        }
        defer { server.stop() }
        let port = server.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, responseTimeoutMs: 100)
            try c.connect()
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 0, count: 1)
                Issue.record("expected a timeout")
            } catch {
                #expect(error.kind == .timeout)
                #expect(error.errno == ETIMEDOUT)
            }
            // The timed-out connection is closed: nothing that arrives on it can be read.
            #expect(!c.isConnected)
            try c.setTimeouts(responseMs: 3000, byteMs: nil)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 0, count: 1) == [222])
            // And the stream stays in step afterwards.
            #expect(try c.readRegisters(table: .holding, address: 0, count: 1) == [222])
        }
    }

    @Test func serverClosingIsConnectionLostThenReconnectWorks() async throws {
        let server = try InProcessServer {
            MappingDelegate(try sampleMapping()) { n, _, _ in n == 2 ? .close : nil }
        }
        defer { server.stop() }
        let port = server.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, responseTimeoutMs: 2000)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 0, count: 1) == [1000])
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 0, count: 1)
                Issue.record("expected connection lost")
            } catch {
                #expect(error.kind == .connectionLost)
                #expect(error.errno == ECONNRESET)
            }
            #expect(!c.isConnected)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 1, count: 1) == [1001])
        }
    }

    @Test func descriptorCapIsAtMostFDSetSize() throws {
        let limit = try DescriptorLimit.capForSelect()
        #expect(limit <= 1024)
        var lim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        #expect(lim.rlim_cur <= 1024)
        #expect(ModbusError(kind: .connect, errno: EMFILE, function: "modbus_connect").isDescriptorExhaustion)
    }

    /// Out of descriptors, connect fails with a typed EMFILE error (in a child process: the
    /// limit must not starve the tests running beside it).
    @Test func connectWithoutDescriptorsIsTypedEMFILE() async {
        await #expect(processExitsWith: .success) {
            var lim = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
            lim.rlim_cur = 64
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
            while dup(0) >= 0 {}
            guard let c = try? ModbusClient(host: "127.0.0.1", port: 1502) else { exit(3) }
            do throws(ModbusError) {
                try c.connect()
                exit(1)
            } catch {
                exit(error.kind == .connect && error.errno == EMFILE && error.isDescriptorExhaustion ? 0 : 2)
            }
        }
    }

    @Test func classifiesErrno() {
        #expect(ModbusError.classify(errno: ModbusError.exceptionErrno(4)) == .exception(4))
        #expect(ModbusError.classify(errno: ModbusError.badDataErrno) == .badResponse)
        #expect(ModbusError.classify(errno: ModbusError.badUnitErrno) == .badResponse)
        #expect(ModbusError.classify(errno: ETIMEDOUT) == .timeout)
        #expect(ModbusError.classify(errno: ECONNRESET) == .connectionLost)
        #expect(ModbusError.classify(errno: EPIPE) == .connectionLost)
        #expect(ModbusError.classify(errno: EINVAL) == .other)
    }
}

@Suite("ModbusServer framing and isolation")
struct ModbusServerTests {
    @Test func slowAndMalformedClientsDoNotStallOthers() async throws {
        let server = try InProcessServer(frameTimeoutMs: 300) { MappingDelegate(try sampleMapping()) }
        defer { server.stop() }
        let port = server.port
        // Half a frame, then nothing: a slow-loris client.
        let slow = try RawSocket(port: port, receiveTimeoutMs: 5000)
        slow.send(Array(readFrame(address: 0, count: 1).prefix(5)))
        // A frame with protocol id 1: closed at once.
        let bad = try RawSocket(port: port)
        bad.send(readFrame(address: 0, count: 1, protocolID: 1))
        #expect(bad.receive() == [])
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, responseTimeoutMs: 1000)
            try c.connect()
            for _ in 0..<20 { #expect(try c.readRegisters(table: .holding, address: 5, count: 1) == [1005]) }
        }
        // The slow client is closed once its frame is overdue (EOF, not a timeout).
        #expect(slow.receive() == [])
    }

    @Test func pipelinedFramesAreAnsweredInOrder() throws {
        let server = try InProcessServer { MappingDelegate(try sampleMapping()) }
        defer { server.stop() }
        let s = try RawSocket(port: server.port)
        s.send(readFrame(tid: 7, address: 1, count: 1) + readFrame(tid: 8, address: 2, count: 1))
        var got: [UInt8] = []
        while got.count < 22, let chunk = s.receive(), !chunk.isEmpty { got += chunk }
        #expect(got == [0, 7, 0, 0, 0, 5, 1, 3, 2, 0x03, 0xE9, 0, 8, 0, 0, 0, 5, 1, 3, 2, 0x03, 0xEA])
    }

    @Test func badQuantityAndUnknownFunctionAnswerExceptionsAtOnce() throws {
        let server = try InProcessServer { MappingDelegate(try sampleMapping()) }
        defer { server.stop() }
        let s = try RawSocket(port: server.port)
        s.send(readFrame(tid: 1, address: 0, count: 126))
        #expect(s.receive() == [0, 1, 0, 0, 0, 3, 1, 0x83, 3])
        s.send(readFrame(tid: 2, function: 0x2B, address: 0, count: 1))
        #expect(s.receive() == [0, 2, 0, 0, 0, 3, 1, 0xAB, 1])
        s.send(readFrame(tid: 3, function: 4, address: 0, count: 1))
        #expect(s.receive() == [0, 3, 0, 0, 0, 3, 1, 0x84, 2])
    }
}

@Suite("ModbusClient against pymodbus 3.8.6")
struct ModbusClientPymodbusTests {
    @Test func readsWhatPymodbusServes() async throws {
        let plc = try PymodbusPLC(spec: #"{"unit": 3, "holding": {"0": 7, "1": 8, "9000": 4711}, "input": {"4": 65535}, "coil": {"2": 1}, "discrete": {"5": 1}}"#)
        defer { plc.stop() }
        let port = plc.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 3, responseTimeoutMs: 2000)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 0, count: 3) == [7, 8, 0])
            #expect(try c.readRegisters(table: .holding, address: 9000, count: 1) == [4711])
            #expect(try c.readRegisters(table: .input, address: 4, count: 1) == [65535])
            #expect(try c.readBits(table: .coil, address: 0, count: 4) == [0, 0, 1, 0])
            #expect(try c.readBits(table: .discrete, address: 5, count: 1) == [1])
        }
        try plc.command("set holding 1 99")
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 3, responseTimeoutMs: 2000)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 1, count: 1) == [99])
        }
    }

    @Test func sparseHoleDrawsException2() async throws {
        let plc = try PymodbusPLC(spec: #"{"unit": 1, "sparse": true, "holding": {"0": 1, "1": 2, "5": 3}}"#)
        defer { plc.stop() }
        let port = plc.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 2000)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 0, count: 2) == [1, 2])
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 0, count: 6)
                Issue.record("expected exception 2")
            } catch {
                #expect(error.kind == .exception(2))
            }
            #expect(try c.readRegisters(table: .holding, address: 5, count: 1) == [3])
        }
    }

    @Test func lateAnswerFromPymodbusIsNotTakenForTheNextOne() async throws {
        let plc = try PymodbusPLC(spec: #"{"unit": 1, "holding": {"0": 111}}"#)
        defer { plc.stop() }
        try plc.command("delay 400")
        let port = plc.port
        try await onThread {
            let c = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 100)
            try c.connect()
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 0, count: 1)
                Issue.record("expected a timeout")
            } catch {
                #expect(error.kind == .timeout)
            }
            #expect(!c.isConnected)
            // pymodbus answers 111 late on the old connection; by the next request the value is 222.
            try plc.command("delay 0")
            try plc.command("set holding 0 222")
            try c.setTimeouts(responseMs: 2000, byteMs: nil)
            try c.connect()
            #expect(try c.readRegisters(table: .holding, address: 0, count: 1) == [222])
        }
    }
}
