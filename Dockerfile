FROM python:3.11-slim
WORKDIR /srv/graftq
COPY pyproject.toml README.md ./
COPY graftq ./graftq
RUN pip install --no-cache-dir .
# Your own app module goes next to it (mount or COPY), e.g. GRAFTQ_APP=myproject.jobs:app.
ENV GRAFTQ_APP=graftq.demo:app
CMD ["sh", "-c", "graftq worker --app \"$GRAFTQ_APP\""]
