#include "custom_ops/tflite/flexbuffer_reader.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace keras_xnor {
namespace {

// FlexBuffer type codes (the upper 6 bits of a packed type byte).
enum FlexType : int {
  kNull = 0, kInt = 1, kUInt = 2, kFloat = 3, kKey = 4, kString = 5, kIndirectInt = 6,
  kIndirectUInt = 7, kIndirectFloat = 8, kMap = 9, kVector = 10, kVectorInt = 11,
  kVectorUInt = 12, kVectorFloat = 13, kVectorKey = 14, kVectorStringDeprecated = 15,
  kVectorInt2 = 16, kVectorUInt2 = 17, kVectorFloat2 = 18, kVectorInt3 = 19, kVectorUInt3 = 20,
  kVectorFloat3 = 21, kVectorInt4 = 22, kVectorUInt4 = 23, kVectorFloat4 = 24, kBlob = 25,
  kBool = 26, kVectorBool = 36,
};

const char* type_name(int type) {
  switch (type) {
    case kNull: return "null";
    case kInt: return "int";
    case kUInt: return "uint";
    case kFloat: return "float";
    case kKey: return "key";
    case kString: return "string";
    case kIndirectInt: return "indirect int";
    case kIndirectUInt: return "indirect uint";
    case kIndirectFloat: return "indirect float";
    case kMap: return "map";
    case kVector: return "vector";
    case kVectorInt: case kVectorInt2: case kVectorInt3: case kVectorInt4: return "int vector";
    case kVectorUInt: case kVectorUInt2: case kVectorUInt3: case kVectorUInt4:
      return "uint vector";
    case kVectorFloat: case kVectorFloat2: case kVectorFloat3: case kVectorFloat4:
      return "float vector";
    case kVectorKey: return "key vector";
    case kVectorStringDeprecated: return "string vector";
    case kBlob: return "blob";
    case kBool: return "bool";
    case kVectorBool: return "bool vector";
    default: return "unknown type";
  }
}

// A cursor over the buffer; every accessor checks bounds and records the first error.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  const std::string& error() const { return error_; }
  bool ok() const { return error_.empty(); }

  bool fail(const std::string& message) {
    if (error_.empty()) error_ = message;
    return false;
  }

  bool in_bounds(std::size_t pos, std::size_t len) {
    if (len > size_ || pos > size_ - len) {
      return fail("FlexBuffer truncated or corrupt: read of " + std::to_string(len) +
                  " bytes at offset " + std::to_string(pos) + " past the end (" +
                  std::to_string(size_) + " bytes)");
    }
    return true;
  }

  static bool valid_width(std::size_t width) {
    return width == 1 || width == 2 || width == 4 || width == 8;
  }

  bool read_uint(std::size_t pos, std::size_t width, std::uint64_t* out) {
    if (!valid_width(width)) return fail("FlexBuffer corrupt: byte width " + std::to_string(width));
    if (!in_bounds(pos, width)) return false;
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < width; ++i) value |= std::uint64_t{data_[pos + i]} << (8 * i);
    *out = value;
    return true;
  }

  bool read_int(std::size_t pos, std::size_t width, std::int64_t* out) {
    std::uint64_t raw = 0;
    if (!read_uint(pos, width, &raw)) return false;
    if (width < 8) {  // sign-extend
      const std::uint64_t sign = std::uint64_t{1} << (8 * width - 1);
      raw = (raw ^ sign) - sign;
    }
    std::memcpy(out, &raw, sizeof(raw));
    return true;
  }

  bool read_float(std::size_t pos, std::size_t width, double* out) {
    std::uint64_t raw = 0;
    if (width != 4 && width != 8) {
      return fail("FlexBuffer corrupt: float of byte width " + std::to_string(width));
    }
    if (!read_uint(pos, width, &raw)) return false;
    if (width == 4) {
      const std::uint32_t bits = static_cast<std::uint32_t>(raw);
      float value;
      std::memcpy(&value, &bits, sizeof(value));
      *out = value;
    } else {
      std::memcpy(out, &raw, sizeof(*out));
    }
    return true;
  }

  // Follows the backwards offset stored at `pos` (in `width` bytes).
  bool indirect(std::size_t pos, std::size_t width, std::size_t* target) {
    std::uint64_t offset = 0;
    if (!read_uint(pos, width, &offset)) return false;
    if (offset > pos) {
      return fail("FlexBuffer corrupt: offset " + std::to_string(offset) + " at " +
                  std::to_string(pos) + " points before the buffer");
    }
    *target = pos - static_cast<std::size_t>(offset);
    return true;
  }

  // Length prefix of a vector/string/map whose first element is at `pos`.
  bool length_at(std::size_t pos, std::size_t width, std::size_t* length) {
    if (pos < width) return fail("FlexBuffer corrupt: length prefix before the buffer");
    std::uint64_t value = 0;
    if (!read_uint(pos - width, width, &value)) return false;
    if (value > size_) {
      return fail("FlexBuffer corrupt: length " + std::to_string(value) + " exceeds the buffer");
    }
    *length = static_cast<std::size_t>(value);
    return true;
  }

  // NUL-terminated string starting at `pos`, at most up to the end of the buffer.
  bool c_string(std::size_t pos, std::string* out) {
    if (pos >= size_) return fail("FlexBuffer corrupt: key offset past the end");
    const void* end = std::memchr(data_ + pos, 0, size_ - pos);
    if (end == nullptr) return fail("FlexBuffer corrupt: unterminated key");
    out->assign(reinterpret_cast<const char*>(data_ + pos),
                static_cast<const std::uint8_t*>(end) - (data_ + pos));
    return true;
  }

  // Decodes one scalar stored inline (or indirectly) at `pos`.
  bool scalar(std::size_t pos, std::size_t parent_width, int type, std::size_t child_width,
              FlexMap::Value* value) {
    std::size_t at = pos;
    std::size_t width = parent_width;
    if (type == kIndirectInt || type == kIndirectUInt || type == kIndirectFloat) {
      if (!indirect(pos, parent_width, &at)) return false;
      width = child_width;
      type = type == kIndirectInt ? kInt : type == kIndirectUInt ? kUInt : kFloat;
    }
    switch (type) {
      case kNull:
        value->kind = FlexMap::Kind::kNull;
        return true;
      case kInt:
        value->kind = FlexMap::Kind::kInt;
        return read_int(at, width, &value->int_value);
      case kUInt:
      case kBool: {
        std::uint64_t raw = 0;
        if (!read_uint(at, width, &raw)) return false;
        if (raw > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          return fail("FlexBuffer value " + std::to_string(raw) + " does not fit int64");
        }
        value->kind = FlexMap::Kind::kInt;
        value->int_value = static_cast<std::int64_t>(raw);
        return true;
      }
      case kFloat:
        value->kind = FlexMap::Kind::kFloat;
        return read_float(at, width, &value->float_value);
      default:
        return fail(std::string("FlexBuffer: expected a scalar, found ") + type_name(type));
    }
  }

  // Decodes the value of a map slot at `pos` (stored in `parent_width` bytes, packed type
  // `packed`). Unsupported kinds are recorded, not errors.
  bool value(std::size_t pos, std::size_t parent_width, std::uint8_t packed,
             FlexMap::Value* out) {
    const int type = packed >> 2;
    const std::size_t child_width = std::size_t{1} << (packed & 3);
    out->type_name = type_name(type);
    switch (type) {
      case kNull: case kInt: case kUInt: case kFloat: case kBool:
      case kIndirectInt: case kIndirectUInt: case kIndirectFloat:
        return scalar(pos, parent_width, type, child_width, out);
      case kString:
      case kKey: {
        std::size_t at = 0;
        if (!indirect(pos, parent_width, &at)) return false;
        out->kind = FlexMap::Kind::kString;
        if (type == kKey) return c_string(at, &out->string_value);
        std::size_t length = 0;
        if (!length_at(at, child_width, &length) || !in_bounds(at, length)) return false;
        out->string_value.assign(reinterpret_cast<const char*>(data_ + at), length);
        return true;
      }
      case kVector: case kVectorInt: case kVectorUInt: case kVectorFloat: case kVectorBool:
      case kVectorInt2: case kVectorUInt2: case kVectorFloat2: case kVectorInt3:
      case kVectorUInt3: case kVectorFloat3: case kVectorInt4: case kVectorUInt4:
      case kVectorFloat4:
        return vector(pos, parent_width, type, child_width, out);
      default:
        out->kind = FlexMap::Kind::kUnsupported;
        return true;
    }
  }

  bool vector(std::size_t pos, std::size_t parent_width, int type, std::size_t width,
              FlexMap::Value* out) {
    if (!valid_width(width)) return fail("FlexBuffer corrupt: vector byte width");
    std::size_t at = 0;
    if (!indirect(pos, parent_width, &at)) return false;
    std::size_t length = 0;
    int element_type = kInt;
    if (type >= kVectorInt2 && type <= kVectorFloat4) {
      length = 2 + (type - kVectorInt2) / 3;
      element_type = kInt + (type - kVectorInt2) % 3;  // int, uint, float
    } else {
      if (!length_at(at, width, &length)) return false;
      element_type = type == kVectorInt ? kInt
                     : type == kVectorUInt ? kUInt
                     : type == kVectorFloat ? kFloat
                     : type == kVectorBool ? kBool
                     : kNull;  // untyped: per-element type bytes
    }
    if (length > size_ / width || !in_bounds(at, length * width)) {
      return fail("FlexBuffer truncated or corrupt: vector of " + std::to_string(length) +
                  " elements does not fit");
    }
    if (type == kVector && !in_bounds(at + length * width, length)) return false;
    bool any_float = false;
    std::vector<FlexMap::Value> elements(length);
    for (std::size_t i = 0; i < length; ++i) {
      int element = element_type;
      std::size_t element_child_width = width;
      if (type == kVector) {
        const std::uint8_t packed = data_[at + length * width + i];
        element = packed >> 2;
        element_child_width = std::size_t{1} << (packed & 3);
      }
      if (element != kInt && element != kUInt && element != kFloat && element != kBool &&
          element != kIndirectInt && element != kIndirectUInt && element != kIndirectFloat) {
        out->kind = FlexMap::Kind::kUnsupported;  // e.g. a vector of strings: not needed
        return true;
      }
      if (!scalar(at + i * width, width, element, element_child_width, &elements[i])) {
        return false;
      }
      any_float = any_float || elements[i].kind == FlexMap::Kind::kFloat;
    }
    out->kind = any_float ? FlexMap::Kind::kFloatVector : FlexMap::Kind::kIntVector;
    for (const FlexMap::Value& element : elements) {
      if (any_float) {
        out->floats.push_back(element.kind == FlexMap::Kind::kFloat
                                  ? element.float_value
                                  : static_cast<double>(element.int_value));
      } else {
        out->ints.push_back(element.int_value);
      }
    }
    return true;
  }

  bool map(std::map<std::string, FlexMap::Value>* values) {
    if (size_ < 3) return fail("FlexBuffer truncated: " + std::to_string(size_) + " bytes");
    const std::size_t root_width = data_[size_ - 1];
    if (!valid_width(root_width)) {
      return fail("FlexBuffer corrupt: root byte width " + std::to_string(root_width));
    }
    const std::uint8_t root_packed = data_[size_ - 2];
    if (size_ < 2 + root_width) return fail("FlexBuffer truncated: no room for the root");
    const std::size_t root_pos = size_ - 2 - root_width;
    if ((root_packed >> 2) != kMap) {
      return fail(std::string("FlexBuffer root is a ") + type_name(root_packed >> 2) +
                  ", expected a map");
    }
    const std::size_t width = std::size_t{1} << (root_packed & 3);
    std::size_t at = 0;
    if (!indirect(root_pos, root_width, &at)) return false;
    std::size_t length = 0;
    if (!length_at(at, width, &length)) return false;
    if (at < 3 * width) return fail("FlexBuffer corrupt: map header before the buffer");
    std::size_t keys_at = 0;
    std::uint64_t keys_width = 0;
    if (!indirect(at - 3 * width, width, &keys_at) ||
        !read_uint(at - 2 * width, width, &keys_width)) {
      return false;
    }
    if (!valid_width(keys_width)) return fail("FlexBuffer corrupt: map keys byte width");
    std::size_t keys_length = 0;
    if (!length_at(keys_at, keys_width, &keys_length)) return false;
    if (keys_length != length) {
      return fail("FlexBuffer corrupt: map has " + std::to_string(length) + " values but " +
                  std::to_string(keys_length) + " keys");
    }
    if (length > size_ / width || !in_bounds(at, length * width + length) ||
        !in_bounds(keys_at, length * keys_width)) {
      return fail("FlexBuffer truncated or corrupt: map of " + std::to_string(length) +
                  " entries does not fit");
    }
    for (std::size_t i = 0; i < length; ++i) {
      std::size_t key_at = 0;
      std::string key;
      if (!indirect(keys_at + i * keys_width, keys_width, &key_at) || !c_string(key_at, &key)) {
        return false;
      }
      FlexMap::Value value;
      if (!this->value(at + i * width, width, data_[at + length * width + i], &value)) {
        return false;
      }
      (*values)[key] = std::move(value);
    }
    return true;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::string error_;
};

}  // namespace

std::string FlexMap::parse(const std::uint8_t* data, std::size_t size) {
  values_.clear();
  if (data == nullptr && size > 0) return "FlexBuffer: null data";
  Reader reader(data, size);
  std::map<std::string, Value> values;
  if (!reader.map(&values)) return reader.error();
  values_ = std::move(values);
  return "";
}

namespace {
std::string found(const std::string& key, const FlexMap::Value& value, const char* wanted) {
  return "attribute '" + key + "' is a " + value.type_name + ", expected " + wanted;
}
}  // namespace

std::string FlexMap::get_int(const std::string& key, std::int64_t* out) const {
  auto it = values_.find(key);
  if (it == values_.end()) return "attribute '" + key + "' is missing";
  if (it->second.kind != Kind::kInt) return found(key, it->second, "an integer");
  *out = it->second.int_value;
  return "";
}

std::string FlexMap::get_bool(const std::string& key, bool* out) const {
  std::int64_t value = 0;
  std::string error = get_int(key, &value);
  if (!error.empty()) return error;
  if (value != 0 && value != 1) return "attribute '" + key + "' is not a bool";
  *out = value != 0;
  return "";
}

std::string FlexMap::get_string(const std::string& key, std::string* out) const {
  auto it = values_.find(key);
  if (it == values_.end()) return "attribute '" + key + "' is missing";
  if (it->second.kind != Kind::kString) return found(key, it->second, "a string");
  *out = it->second.string_value;
  return "";
}

std::string FlexMap::get_int_vector(const std::string& key, std::vector<std::int64_t>* out) const {
  auto it = values_.find(key);
  if (it == values_.end()) return "attribute '" + key + "' is missing";
  if (it->second.kind != Kind::kIntVector) return found(key, it->second, "an int vector");
  *out = it->second.ints;
  return "";
}

std::string FlexMap::to_string() const {
  std::ostringstream out;
  out << "{";
  bool first = true;
  for (const auto& [key, value] : values_) {
    out << (first ? "" : ", ") << '"' << key << "\": ";
    first = false;
    switch (value.kind) {
      case Kind::kInt: out << value.int_value; break;
      case Kind::kFloat: out << value.float_value; break;
      case Kind::kString: {
        out << '"';
        for (char c : value.string_value) {
          if (c == '"' || c == '\\') out << '\\' << c;
          else if (static_cast<unsigned char>(c) < 0x20) out << "?";
          else out << c;
        }
        out << '"';
        break;
      }
      case Kind::kIntVector: {
        out << "[";
        for (std::size_t i = 0; i < value.ints.size(); ++i) out << (i ? ", " : "") << value.ints[i];
        out << "]";
        break;
      }
      case Kind::kFloatVector: {
        out << "[";
        for (std::size_t i = 0; i < value.floats.size(); ++i) {
          out << (i ? ", " : "") << value.floats[i];
        }
        out << "]";
        break;
      }
      case Kind::kNull: out << "null"; break;
      case Kind::kUnsupported: out << "\"<" << value.type_name << ">\""; break;
    }
  }
  out << "}";
  return out.str();
}

}  // namespace keras_xnor
