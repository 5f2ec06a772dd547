package dev.fraqat.deploy.test

import dev.fraqat.deploy.DmaBuf
import dev.fraqat.deploy.RunGuard
import dev.fraqat.deploy.StartFailure
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.Schemas
import java.io.File
import kotlin.system.exitProcess

/**
 * The Android layer's plain-JVM logic, run by `compile-check.sh --test` on the classes it just compiled:
 * `java ... dev.fraqat.deploy.test.AppTestsKt --repo <repository> --out <dir>`. One line per test, then
 * "N passed, M failed"; exit code 1 when any failed. `--out` keeps the start-failure result.json for the Python side.
 */
private class Failed(message: String) : Exception(message)

private fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw Failed(message())
}

private val DEVICE = DeviceInfo("samsung", "SM-S938B", "SM8750", 35, "htp", null, null)

fun main(args: Array<String>) {
    val repo = File(args[args.indexOf("--repo") + 1])
    val out = args.indexOf("--out").takeIf { it >= 0 }?.let { File(args[it + 1]) }
        ?: kotlin.io.path.createTempDirectory("fraqat-app").toFile()
    val schemas = Schemas.fromDirectory(File(repo, "fraqat_deploy/device/schemas"))
    val tests = linkedMapOf<String, () -> Unit>(
        "a request is claimed once, across activity instances" to {
            val request = File(out, "runs/guard/request.json").apply { parentFile.mkdirs(); writeText("{}") }
            File(request.parentFile, RunGuard.MARKER).delete()
            check(RunGuard.claim(request)) { "first claim refused" }
            check(!RunGuard.claim(request)) { "second claim of the same request granted: it would run twice" }
            check(File(request.parentFile, RunGuard.MARKER).isFile) { "no marker beside the request" }
            File(request.parentFile, RunGuard.MARKER).delete() // what the CLI does before starting the request again
            check(RunGuard.claim(request)) { "a re-started request (marker removed) refused" }
        },
        "a native library that does not load ends in a valid result.json" to {
            val request = File(out, "runs/nolib/request.json").apply { parentFile.mkdirs(); writeText("{}") }
            val file = StartFailure.write(request, UnsatisfiedLinkError("dlopen failed: library \"libonnxruntime.so\" not found"), DEVICE)
            val result = Json.parse(file.readText())
            schemas.validate("result", result)
            val error = (result as Map<*, *>)["error"] as Map<*, *>
            check(error["kind"] == "htp_unavailable") { "kind ${error["kind"]}" }
            check((error["message"] as String).contains("libonnxruntime.so")) { "message ${error["message"]}" }
            check(result["request_id"] == "nolib") { "request_id ${result["request_id"]}" }
            val status = Json.parse(File(request.parentFile, "status.json").readText())
            schemas.validate("status", status)
            check((status as Map<*, *>)["state"] == "error") { "status ${status["state"]}" }
        },
        "start failures keep their kind" to {
            check(StartFailure.classify(BenchError(ErrorKind.MODEL_MISSING, "x")).first == ErrorKind.MODEL_MISSING) { "BenchError" }
            check(StartFailure.classify(java.io.FileNotFoundException("schemas/result.schema.json")).first == ErrorKind.INTERNAL) { "missing asset" }
            check(StartFailure.classify(OutOfMemoryError()).first == ErrorKind.OUT_OF_MEMORY) { "OOM" }
            check(StartFailure.device { throw IllegalStateException("no Build") }.model == "?") { "device fallback" }
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
            check(bytes == 12 * mb) { "counted $bytes bytes, expected ${12 * mb}" }
            check(DmaBuf.bytes(emptySequence(), "") == 0L) { "nothing held" }
        },
        "DMA-BUF is read from this process's /proc" to {
            val now = DmaBuf.currentMb()
            check(now != null && now >= 0.0) { "no reading from /proc/self on Linux: $now" }
            check(DmaBuf.currentMb(File(out, "no-such-proc")) == null) { "an unreadable /proc gives a reading" }
        },
    )
    var failed = 0
    for ((name, body) in tests) {
        try {
            body()
            println("ok    $name")
        } catch (e: Throwable) {
            failed++
            println("FAIL  $name: ${e::class.java.simpleName}: ${e.message}")
        }
    }
    println("${tests.size - failed} passed, $failed failed")
    if (failed > 0) exitProcess(1)
}
