import Testing
@testable import TibetTwin

// One formatter for every place a decoded value is printed: the shortest text that reads back
// the same value at the value's precision.

private func spec(_ type: ValueType, scale: Double = 1, offset: Double = 0) -> RegisterSpec {
    RegisterSpec(name: "v", table: .holding, address: 0, type: type, scale: scale, offset: offset)
}

/// Decodes `raw` words as `spec`, the way the poller does.
private func decoded(_ s: RegisterSpec, _ words: [UInt16]) throws -> Value {
    try RegisterDecoder.decode(s, words: words)
}

private func float32Words(_ f: Float) -> [UInt16] {
    [UInt16(f.bitPattern >> 16), UInt16(f.bitPattern & 0xFFFF)]
}

@Suite struct NumberTextTests {
    @Test func float32PrintsItsOwnShortestText() throws {
        let s = spec(.float32)
        let v = try decoded(s, float32Words(230.1))
        #expect(v.description == "230.10000610351562", "the widened double, what was printed before")
        #expect(v.text(precision: s.precision) == "230.1")
        #expect(ReadReport.jsonValue(v, precision: s.precision).canonical == "230.1")
        // The JSON number reads back to the same float.
        #expect(Float(Double("230.1")!) == Float(230.1))
        for f: Float in [0.1, -0.1, 1.5, 3.4028235e38, -Float.leastNormalMagnitude, 1e-7, 123456.79, 16777216] {
            let text = NumberText.text(Double(f), precision: .float32)
            #expect(Float(text) == f, "\(f) printed as \(text)")
            #expect(text.count <= f.description.count)
        }
        #expect(NumberText.text(Double(Float(1e-7)), precision: .float32) == "1e-07")
        #expect(NumberText.text(Double(Float(3.4028235e38)), precision: .float32) == "3.4028235e+38")
    }

    @Test func float64KeepsItsShortestRoundTrip() throws {
        let s = spec(.float64)
        for d in [0.1, 230.1, -7.25, 1e-300, 1.7976931348623157e308, 2.2250738585072014e-308, 123456789.123, 1e16, -1e-5] {
            let text = NumberText.text(d, precision: s.precision)
            #expect(Double(text) == d, "\(d) printed as \(text)")
            #expect(NumberText.value(d, precision: .float64) == d)
        }
        #expect(NumberText.text(1e-300, precision: .float64) == "1e-300")
        #expect(NumberText.text(1e16, precision: .float64) == "1e+16")
        #expect(NumberText.text(0.1 + 0.2, precision: .float64) == "0.30000000000000004", "a float64 is not rounded")
    }

    @Test func scaledIntegersUseTheScalesDecimals() throws {
        let s = spec(.uint16, scale: 0.1)
        #expect(s.precision == .decimals(1))
        let v = try decoded(s, [73])
        #expect(v == .double(73 * 0.1), "the value itself is unchanged: the decision uses it")
        #expect(v.description == "7.300000000000001")
        #expect(v.text(precision: s.precision) == "7.3")
        #expect(ReadReport.jsonValue(v, precision: s.precision).canonical == "7.3")
        // Negative raw values, an offset with more decimals, and integral results.
        let t = spec(.int16, scale: 0.01, offset: -273.15)
        #expect(t.precision == .decimals(2))
        #expect(try decoded(t, [UInt16(bitPattern: -1234)]).text(precision: t.precision) == "-285.49")
        #expect(try decoded(spec(.int16, scale: 0.1), [70]).text(precision: .decimals(1)) == "7")
        #expect(try decoded(spec(.int16, scale: 0.1), [UInt16(bitPattern: -3)]).text(precision: .decimals(1)) == "-0.3")
        #expect(NumberText.text(-0.04, precision: .decimals(1)) == "0", "a negative zero prints as 0")
        // Scales written with an exponent, or not decimal at all.
        #expect(NumberText.decimalPlaces(0.25) == 2)
        #expect(NumberText.decimalPlaces(1e-5) == 5)
        #expect(NumberText.decimalPlaces(2.5e-6) == 7)
        #expect(NumberText.decimalPlaces(10) == 0)
        #expect(NumberText.decimalPlaces(1e20) == 0)
        #expect(NumberText.decimalPlaces(1.0 / 3.0) == nil)
        #expect(spec(.uint16, scale: 1.0 / 3.0).precision == .float64)
        #expect(NumberText.text(12 * 1e-5, precision: .decimals(5)) == "0.00012")
        // Too large for the scaled product to be exact: left as it is.
        #expect(NumberText.text(1e300, precision: .decimals(3)) == "1e+300")
    }

    @Test func scaledFloat32StaysAtFloatPrecision() throws {
        let s = spec(.float32, scale: 0.5)
        #expect(s.precision == .float32)
        let v = try decoded(s, float32Words(460.2))
        #expect(v.text(precision: s.precision) == "230.1")
        // Beyond float32's range after scaling: the double's own text.
        #expect(NumberText.text(1e300, precision: .float32) == "1e+300")
        #expect(NumberText.text(1e-300, precision: .float32) == "1e-300")
    }

    @Test func nonFiniteValuesPrintAsBefore() throws {
        for p in [ValuePrecision.float32, .float64, .decimals(1)] {
            #expect(NumberText.text(.nan, precision: p) == Value.double(.nan).description)
            #expect(NumberText.text(.infinity, precision: p) == Value.double(.infinity).description)
            #expect(NumberText.text(-.infinity, precision: p) == Value.double(-.infinity).description)
            #expect(ReadReport.jsonValue(.double(.nan), precision: p) == .null)
            #expect(ReadReport.jsonValue(.double(-.infinity), precision: p) == .null)
        }
        let v = try decoded(spec(.float32), float32Words(.nan))
        #expect(v.text(precision: .float32) == "nan")
    }

    @Test func integersAndOtherValuesAreUntouched() {
        #expect(Value.int(-5).text(precision: .decimals(2)) == "-5")
        #expect(Value.uint(UInt64.max).text(precision: .float32) == "18446744073709551615")
        #expect(Value.bool(true).text(precision: .float64) == "true")
        #expect(Value.string("A 1").at(precision: .float32) == .string("A 1"))
    }
}
