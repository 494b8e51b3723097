"""The `spark` engine: the heavy stages on Apache Spark, writing the local engine's artifacts.

Nothing here imports pyspark at module level, so the `local` engine (the default) never needs
Java or a JVM; `session.spark_session` starts or receives the session a step runs on.
"""
