"""Models and model files: FL model definitions under approved projects; uploads, quarantine and scan verdicts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 17:53:39.604792
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('models',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('backend', sa.Enum('FLOWER', 'NVFLARE', name='fl_backend'), nullable=False),
    sa.Column('job_type', sa.Enum('standard', 'fed_opt', 'evaluation', name='fl_job_type'), nullable=False),
    sa.Column('status', sa.Enum('PENDING', 'QUEUED', 'PREPARING', 'RUNNING', 'RESULTS_UPLOADED', 'ERROR', 'STOPPED', 'RESULTS_UPLOAD_FAILED', name='model_status'), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_models_created_by_users'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_models_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models'))
    )
    op.create_index(op.f('ix_models_project_id'), 'models', ['project_id'], unique=False)
    op.create_index('uq_models_project_name_live', 'models', [sa.literal_column('project_id'), sa.literal_column('lower(name)')], unique=True, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_table('model_files',
    sa.Column('model_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('status', sa.Enum('UPLOADING', 'SCANNING', 'CLEAN', 'BLOCKED', name='file_status'), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('object_key', sa.String(length=512), nullable=True),
    sa.Column('findings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('advisory', sa.Boolean(), nullable=False),
    sa.Column('uploaded_by', sa.Uuid(), nullable=True),
    sa.Column('scan_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('scanned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('upload_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_files_model_id_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['uploaded_by'], ['users.id'], name=op.f('fk_model_files_uploaded_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_files'))
    )
    op.create_index(op.f('ix_model_files_model_id'), 'model_files', ['model_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_model_files_model_id'), table_name='model_files')
    op.drop_table('model_files')
    op.drop_index('uq_models_project_name_live', table_name='models', postgresql_where=sa.text('deleted_at IS NULL'))
    op.drop_index(op.f('ix_models_project_id'), table_name='models')
    op.drop_table('models')
    for enum in ('file_status', 'model_status', 'fl_job_type', 'fl_backend'):
        sa.Enum(name=enum).drop(op.get_bind(), checkfirst=True)
