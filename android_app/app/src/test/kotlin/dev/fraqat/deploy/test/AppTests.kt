package dev.fraqat.deploy.test

import dev.fraqat.deploy.DmaBuf
import dev.fraqat.deploy.RunGuard
import dev.fraqat.deploy.StartFailure
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.Schemas
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.DynamicTest.dynamicTest
import org.junit.jupiter.api.TestFactory
import java.io.File

/**
 * The Android layer's plain-JVM logic, run with JUnit by `compile-check.sh --test` on the classes it just compiled
 * (against android-all). System properties: `fraqat.repo` the repository root (required), `fraqat.out` a folder that
 * keeps the start-failure result.json for the Python side.
 */
class AppTests {
    @TestFactory
    fun app(): List<DynamicTest> = tests().map { (name, body) -> dynamicTest(name) { body() } }
}

private val DEVICE = DeviceInfo("samsung", "SM-S938B", "SM8750", 35, "htp", null, null)

private fun tests(): Map<String, () -> Unit> {
    val repo = File(System.getProperty("fraqat.repo") ?: error("set -Dfraqat.repo=<repository root> (compile-check.sh does)"))
    val out = System.getProperty("fraqat.out")?.let { File(it) } ?: kotlin.io.path.createTempDirectory("fraqat-app").toFile()
    val schemas = Schemas.fromDirectory(File(repo, "fraqat_deploy/device/schemas"))
    return linkedMapOf(
        "a request is claimed once, across activity instances" to {
            val request = File(out, "runs/guard/request.json").apply { parentFile.mkdirs(); writeText("{}") }
            File(request.parentFile, RunGuard.MARKER).delete()
            assertTrue(RunGuard.claim(request)) { "first claim refused" }
            assertTrue(!RunGuard.claim(request)) { "second claim of the same request granted: it would run twice" }
            assertTrue(File(request.parentFile, RunGuard.MARKER).isFile) { "no marker beside the request" }
            File(request.parentFile, RunGuard.MARKER).delete() // what the CLI does before starting the request again
            assertTrue(RunGuard.claim(request)) { "a re-started request (marker removed) refused" }
        },
        "a native library that does not load ends in a valid result.json" to {
            val request = File(out, "runs/nolib/request.json").apply { parentFile.mkdirs(); writeText("{}") }
            val file = StartFailure.write(request, UnsatisfiedLinkError("dlopen failed: library \"libonnxruntime.so\" not found"), DEVICE)
            val result = Json.parse(file.readText())
            schemas.validate("result", result)
            val error = (result as Map<*, *>)["error"] as Map<*, *>
            assertTrue(error["kind"] == "htp_unavailable") { "kind ${error["kind"]}" }
            assertTrue((error["message"] as String).contains("libonnxruntime.so")) { "message ${error["message"]}" }
            assertTrue(result["request_id"] == "nolib") { "request_id ${result["request_id"]}" }
            val status = Json.parse(File(request.parentFile, "status.json").readText())
            schemas.validate("status", status)
            assertTrue((status as Map<*, *>)["state"] == "error") { "status ${status["state"]}" }
        },
        "start failures keep their kind" to {
            assertTrue(StartFailure.classify(BenchError(ErrorKind.MODEL_MISSING, "x")).first == ErrorKind.MODEL_MISSING) { "BenchError" }
            assertTrue(StartFailure.classify(java.io.FileNotFoundException("schemas/result.schema.json")).first == ErrorKind.INTERNAL) { "missing asset" }
            assertTrue(StartFailure.classify(OutOfMemoryError()).first == ErrorKind.OUT_OF_MEMORY) { "OOM" }
            assertTrue(StartFailure.device { throw IllegalStateException("no Build") }.model == "?") { "device fallback" }
        },
        "DMA-BUF buffers count once each, by inode" to {
            val mb = 1024L * 1024
            val fdinfos = sequenceOf(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t4001\nsize:\t${8 * mb}\ncount:\t3\nexp_name:\tqcom,system\nname:\t\n",
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t4001\nsize:\t${8 * mb}\ncount:\t3\nexp_name:\tqcom,system\n", // same buffer, second fd
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t4002\nsize:\t${2 * mb}\ncount:\t1\nexp_name:\tsystem\n",
                "pos:\t0\nflags:\t0100000\nmnt_id:\t24\nino:\t77\n", // a regular file
            )
            val maps = """
                7000000000-7000800000 rw-s 00000000 00:0b 4001                             /dmabuf:
                7100000000-7100100000 rw-s 00000000 00:0b 4003                             anon_inode:dmabuf
                7100200000-7100300000 rw-s 00100000 00:0b 4003                             anon_inode:dmabuf
                7200000000-7200001000 r--p 00000000 fd:05 1234                             /system/lib64/libc.so
            """.trimIndent()
            val bytes = DmaBuf.bytes(fdinfos, maps)
            // 8 MB (fd, mapped too) + 2 MB (fd) + 2 x 1 MB mapped without a descriptor
            assertTrue(bytes == 12 * mb) { "counted $bytes bytes, expected ${12 * mb}" }
            assertTrue(DmaBuf.bytes(emptySequence(), "") == 0L) { "nothing held" }
        },
        "DMA-BUF is read from this process's /proc" to {
            val now = DmaBuf.currentMb()
            assertTrue(now != null && now >= 0.0) { "no reading from /proc/self on Linux: $now" }
            assertTrue(DmaBuf.currentMb(File(out, "no-such-proc")) == null) { "an unreadable /proc gives a reading" }
        },
    )
}
