// Compile-time stand-in for the two Kotlin helpers of Qualcomm's onnxruntime-android-qnn AAR that HtpBackend calls.
// That AAR is not served by the registry this project's CI reaches, so android_app/app/compile-check.sh compiles the
// app against these declarations: they check the app's call sites (names, no arguments, String results) as written
// here, NOT against the real AAR. Never packaged into the app; calling them fails.
@file:JvmName("QnnPluginEp")

package ai.onnxruntime.qnnpluginep

/** The QNN plugin EP's name as OrtEpDevice.getEpName() reports it. */
fun getEpName(): String = throw UnsupportedOperationException("compile-check stand-in for onnxruntime-android-qnn")

/** The absolute path of libonnxruntime_providers_qnn.so inside the app, for OrtEnvironment.registerExecutionProviderLibrary. */
fun getLibraryPath(): String = throw UnsupportedOperationException("compile-check stand-in for onnxruntime-android-qnn")
