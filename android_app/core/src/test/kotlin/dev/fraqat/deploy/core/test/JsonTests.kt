package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.JsonSchema
import org.json.JSONException
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows

fun jsonTests(s: Suite) {
    s.test("json: values, escapes and numbers") {
        val v = Json.parse("""{"a": [1, -0, 2.5, 1e3, -12345678901234, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 ü"}""")
            as Map<*, *>
        val a = v["a"] as List<*>
        assertTrue(Json.equal(listOf(1L, 0L, 2.5, 1000.0, -12345678901234L, true, false, null), a)) { "array: $a" }
        // integers read as Long, whatever width org.json chose (Integer, Long, BigInteger); others as Double
        assertEquals(listOf(1L, -12345678901234L), listOf(a[0], a[4]), "integers")
        assertEquals(listOf(2.5, 1000.0), listOf(a[2], a[3]), "fraction and exponent")
        assertEquals("q\"\\/\b\u000C\n\r\té\uD83D\uDE00 ü", v["s"], "string")
        val big = Json.parse("123456789012345678901234567890")
        assertTrue(big is Double && big > 1.2e29) { "a huge integer reads as a double, got $big" }
    }

    s.test("json: writing round-trips, compact and indented, in key order; numbers as org.json writes them") {
        val value = linkedMapOf(
            "x" to listOf(1, 2.25, -3.0e-7, 1.0e21, 0.1), "t" to "tab\tquote\"nl\n\u0001é", "e" to emptyMap<String, Any?>(),
            "l" to emptyList<Any?>(), "n" to null,
        )
        for (indent in listOf(0, 1, 2)) {
            val text = Json.write(value, indent)
            assertTrue(Json.equal(value, Json.parse(text))) { "round trip with indent $indent: $text" }
            assertEquals(listOf("x", "t", "e", "l", "n"), Regex("\"(\\w)\":").findAll(text).map { it.groupValues[1] }.toList(), "key order")
        }
        assertEquals("{\n  \"a\": [\n    1\n  ],\n  \"e\": {}\n}", Json.write(linkedMapOf("a" to listOf(1), "e" to emptyMap<String, Any?>())), "indented form")
        assertEquals("""{"a":[1,2.5],"b":"\u0001"}""", Json.write(linkedMapOf("a" to listOf(1, 2.5), "b" to "\u0001"), 0), "compact form")
        assertEquals("[[1,2],[0.5]]", Json.write(listOf(intArrayOf(1, 2), doubleArrayOf(0.5)), 0), "primitive arrays")
        // a float is written in its own shortest form, not its double widening (0.10000000149011612)
        assertEquals("[0.1,1.0E-5]", Json.write(listOf(0.1f, 1e-5f), 0), "floats")
        // a whole double loses its ".0" (Python reads an int; the schemas' "number" takes both)
        assertEquals("[2,2.5,3]", Json.write(listOf(2.0, 2.5, 3L), 0), "whole doubles")
        assertEquals("\"x\"", Json.write("x"), "a scalar")
        assertThrows<JSONException>("NaN has no JSON form") { Json.write(listOf(Double.NaN)) }
        assertThrows<JSONException>("a non-string key") { Json.write(mapOf(1 to 2)) }
    }

    s.test("json: broken documents are refused") {
        // org.json is lenient (it takes "[1,]", "tru", unquoted strings); what both its Android and its Maven
        // Central versions refuse, and a truncated or garbled request.json is, must be refused
        val bad = listOf(
            "", "{", "[1", "]", "}", ":", "\"unterminated", "\"\\u12\"", "\"\\u12G4\"", "{\"a\" 1}", "{\"a\"}", "{\"a\":}",
            "{\"a\":1 \"b\":2}", "[\"a\" \"b\"]", "{}}",
        )
        for (text in bad) assertThrows<JSONException>("parse '$text'") { Json.parse(text) }
        assertThrows<JSONException>("deep nesting") { Json.parse("[".repeat(600) + "]".repeat(600)) }
    }

    s.test("json: equality treats 1 and 1.0 alike, not 1 and true") {
        assertTrue(Json.equal(mapOf("a" to 1L, "b" to listOf(2.0)), mapOf("b" to listOf(2L), "a" to 1.0))) { "numeric equality" }
        assertTrue(!Json.equal(1L, true)) { "1 is not true" }
        assertTrue(!Json.equal(listOf(1L, 2L), listOf(2L, 1L))) { "arrays are ordered" }
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
        assertTrue(schema.isValid(Json.parse("""{"i": 2.0, "n": null, "s": "ab"}"""))) { "2.0 is an integer, null allowed" }
        for (bad in listOf("""{"i": 2.5}""", """{"i": true}""", """{"n": "1"}""", """{"s": "Ab"}""", """{"s": "a"}""", """{"x": 1}""", "[]")) {
            assertTrue(!schema.isValid(Json.parse(bad))) { "$bad must be rejected" }
        }
    }
}
