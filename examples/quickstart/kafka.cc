// Kafka: one consumer group on a topic. The topic is created on first use with
// KAFKA_OPTION_EVENTBUS_PARTITIONS partitions (3 by default; a warning says so): create it
// yourself in production (docs/provisioning.md).
//   KAFKA_BROKERS=127.0.0.1:9092 ./eventbus-quickstart-kafka
#include "eventbus/kafka/kafka_event_stream.h"
#include "eventbus/log.h"
#include "eventbus/session.h"
#include "roundtrip.h"

absl::Status Run() {
  // librdkafka's and the backend's diagnostics go through this sink, never straight to stderr.
  eventbus::SetLogSink(eventbus::StderrLogSink(), eventbus::LogLevel::kWarning);
  EVENTBUS_RETURN_IF_ERROR(eventbus::kafka::RegisterKafkaBackend());
  eventbus::Environment env = eventbus::ProcessEnvironment();  // KAFKA_BROKERS, KAFKA_OPTION_*
  env["EVENT_STREAM_TYPE"] = "kafka";
  EVENTBUS_ASSIGN_OR_RETURN(eventbus::StreamSession session,
                            eventbus::StreamSession::FromEnvironment(env));
  return quickstart::RoundTrip(session);
}

int main() { return quickstart::Report(Run()); }
