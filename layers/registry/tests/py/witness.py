"""Confluent's own serializers as independent witnesses of the registry
layer: they produce records the layer must decode, and read records the
layer's encoder wrote.

    witness.py produce-avro BOOTSTRAP REGISTRY TOPIC SCHEMA VALUES
    witness.py produce-json BOOTSTRAP REGISTRY TOPIC SCHEMA VALUES
    witness.py produce-protobuf BOOTSTRAP REGISTRY TOPIC
    witness.py consume-avro BOOTSTRAP REGISTRY TOPIC COUNT

SCHEMA is the schema's JSON text, VALUES a JSON list of values. The produce
commands print the schema id their serializer used; consume-avro prints one
JSON line per record: the value AvroDeserializer decoded, the schema id of
the frame, and whether the body after the frame is byte-identical to
fastavro's encoding of that value with the writer schema.
"""
import faulthandler
import io
import json
import sys

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(bootstrap, topic, payloads):
    producer = Producer({"bootstrap.servers": bootstrap})
    for p in payloads:
        producer.produce(topic, value=p)
    if producer.flush(30) != 0:
        sys.exit("records not delivered")


def serialized(serializer, topic, values):
    ctx = SerializationContext(topic, MessageField.VALUE)
    out = [serializer(v, ctx) for v in values]
    ids = {int.from_bytes(b[1:5], "big") for b in out}
    assert len(ids) == 1, ids
    return out, ids.pop()


def main():
    cmd, bootstrap, url, topic = sys.argv[1:5]
    # Before the test's 90 s deadline: print where this process is and exit,
    # so a stall is reported with its place rather than killed silently.
    faulthandler.dump_traceback_later(75, exit=True)
    # The client waits forever for an answer by default: a request the
    # registry never answers fails after 10 s instead and is retried.
    registry = SchemaRegistryClient({"url": url, "timeout": 10})
    if cmd == "produce-avro":
        schema, values = sys.argv[5], json.loads(sys.argv[6])
        payloads, schema_id = serialized(AvroSerializer(registry, schema), topic, values)
        produce(bootstrap, topic, payloads)
        print(schema_id)
    elif cmd == "produce-json":
        schema, values = sys.argv[5], json.loads(sys.argv[6])
        payloads, schema_id = serialized(JSONSerializer(schema, registry), topic, values)
        produce(bootstrap, topic, payloads)
        print(schema_id)
    elif cmd == "produce-protobuf":
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto(name="shop/order.proto", package="shop", syntax="proto3")
        m = fdp.message_type.add(name="Order")
        m.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        order = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))
        serializer = ProtobufSerializer(order, registry, {"use.deprecated.format": False})
        payloads, schema_id = serialized(serializer, topic, [order(id="o-1")])
        produce(bootstrap, topic, payloads)
        print(schema_id)
    elif cmd == "consume-avro":
        count = int(sys.argv[5])
        deserializer = AvroDeserializer(registry)
        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "witness-" + topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        consumer.subscribe([topic])
        ctx = SerializationContext(topic, MessageField.VALUE)
        seen = 0
        polls = 0
        while seen < count:
            polls += 1
            if polls > 900:
                sys.exit(f"only {seen} of {count} records in time")
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                sys.exit(str(msg.error()))
            raw = msg.value()
            schema_id = int.from_bytes(raw[1:5], "big")
            value = deserializer(raw, ctx)
            writer = fastavro.parse_schema(json.loads(registry.get_schema(schema_id).schema_str))
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, value)
            print(json.dumps({"value": value, "schema_id": schema_id, "fastavro_identical": buf.getvalue() == raw[5:]}))
            seen += 1
        consumer.close()
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
