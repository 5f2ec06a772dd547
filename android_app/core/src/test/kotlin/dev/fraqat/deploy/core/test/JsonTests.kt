package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.JsonException
import dev.fraqat.deploy.core.JsonSchema

fun jsonTests(s: Suite) {
    s.test("json: values, escapes and numbers") {
        val v = Json.parse("""{"a": [1, -0, 2.5, 1e3, -12345678901234, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 ü"}""")
            as Map<*, *>
        assertEquals(listOf(1L, 0L, 2.5, 1000.0, -12345678901234L, true, false, null), v["a"], "array")
        assertEquals("q\"\\/\b\u000C\n\r\té\uD83D\uDE00 ü", v["s"], "string")
        assertEquals(listOf("a", "s"), v.keys.toList(), "key order")
        val big = Json.parse("123456789012345678901234567890")
        check(big is Double && big > 1.2e29) { "a huge integer reads as a double, got $big" }
    }

    s.test("json: writing round-trips, compact and indented") {
        val value = linkedMapOf(
            "x" to listOf(1, 2.25, -3.0e-7, 1.0e21, 0.1), "t" to "tab\tquote\"nl\n\u0001é", "e" to emptyMap<String, Any?>(),
            "l" to emptyList<Any?>(), "n" to null,
        )
        for (indent in listOf(0, 1, 2)) {
            val text = Json.write(value, indent)
            check(Json.equal(value, Json.parse(text))) { "round trip with indent $indent: $text" }
        }
        assertEquals("""{"a":[1,2.5],"b":"\u0001"}""", Json.write(linkedMapOf("a" to listOf(1, 2.5), "b" to "\u0001"), 0), "compact form")
        // a float is written in its own shortest form, not its double widening (0.10000000149011612)
        assertEquals("[0.1,1.0E-5]", Json.write(listOf(0.1f, 1e-5f), 0), "floats")
        assertThrows<JsonException>("NaN has no JSON form") { Json.write(listOf(Double.NaN)) }
    }

    s.test("json: malformed documents are refused") {
        val bad = listOf(
            "", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "-", "1e", "+1", "NaN", "Infinity", "\"unterminated", "\"tab\there\"",
            "{\"a\" 1}", "{1: 2}", "[1 2]", "tru", "nul", "\"\\x\"", "\"\\u12G4\"", "1 2", "{}}",
        )
        for (text in bad) assertThrows<JsonException>("parse '$text'") { Json.parse(text) }
        assertThrows<JsonException>("deep nesting") { Json.parse("[".repeat(600) + "]".repeat(600)) }
    }

    s.test("json: equality treats 1 and 1.0 alike, not 1 and true") {
        check(Json.equal(mapOf("a" to 1L, "b" to listOf(2.0)), mapOf("b" to listOf(2L), "a" to 1.0))) { "numeric equality" }
        check(!Json.equal(1L, true)) { "1 is not true" }
        check(!Json.equal(listOf(1L, 2L), listOf(2L, 1L))) { "arrays are ordered" }
    }

    s.test("schema: keywords outside the supported subset are refused") {
        assertThrows<IllegalArgumentException>("unsupported keyword") { JsonSchema.parse("""{"type": "array", "contains": {"type": "string"}}""") }
        assertThrows<IllegalArgumentException>("nested unsupported keyword") {
            JsonSchema.parse("""{"properties": {"a": {"exclusiveMinimum": 0}}}""")
        }
    }

    s.test("schema: types, integers as Python's jsonschema reads them") {
        val schema = JsonSchema.parse(
            """{"type": "object", "properties": {"i": {"type": "integer"}, "n": {"type": ["number", "null"]},
               "s": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2}}, "additionalProperties": false}""",
        )
        check(schema.isValid(Json.parse("""{"i": 2.0, "n": null, "s": "ab"}"""))) { "2.0 is an integer, null allowed" }
        for (bad in listOf("""{"i": 2.5}""", """{"i": true}""", """{"n": "1"}""", """{"s": "Ab"}""", """{"s": "a"}""", """{"x": 1}""", "[]")) {
            check(!schema.isValid(Json.parse(bad))) { "$bad must be rejected" }
        }
    }
}
